// tokentrace dashboard: local time zone, auto-refresh of the data region, sortable tables.
// Everything else is server-rendered; without this script the page still shows it all
// (in UTC, refreshed by reloading).
(function () {
  "use strict";

  function dataRegion() { return document.getElementById("data"); }

  // --- the viewer's time zone: a cookie, so the server labels times in local time ------
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
  if (zone) {
    document.cookie = "tt_tz=" + encodeURIComponent(zone) + "; path=/; max-age=31536000; SameSite=Strict";
  }

  // --- sortable tables (the sort survives a refresh) --------------------------------------
  var sortState = null; // {table: id, col: index, dir: 1 | -1}

  function cellKey(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell ? (cell.getAttribute("data-v") || cell.textContent || "") : "";
    if (!numeric) { return raw.toLowerCase(); }
    var value = parseFloat(raw);
    return isNaN(value) ? null : value;
  }

  function applySort() {
    if (!sortState) { return; }
    var table = document.getElementById(sortState.table);
    if (!table || !table.tHead || !table.tBodies.length) { return; }
    var headers = table.tHead.rows[0].cells;
    var numeric = headers[sortState.col].getAttribute("data-sort") !== "text";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var dir = sortState.dir;
    var col = sortState.col;
    rows.sort(function (a, b) {
      var x = cellKey(a, col, numeric), y = cellKey(b, col, numeric);
      if (x === y) { return 0; }
      if (x === null) { return 1; } // unknown figures last, whichever the direction
      if (y === null) { return -1; }
      return (x < y ? -1 : 1) * dir;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(headers, function (th, i) {
      if (th.hasAttribute("data-sort")) {
        th.setAttribute("aria-sort", i === col ? (dir > 0 ? "ascending" : "descending") : "none");
      }
    });
  }

  document.addEventListener("click", function (event) {
    var th = event.target.closest ? event.target.closest("th[data-sort]") : null;
    if (!th) { return; }
    var table = th.closest("table");
    var col = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var again = sortState && sortState.table === table.id && sortState.col === col;
    // Text sorts A→Z first; figures largest first.
    var dir = again ? -sortState.dir : (th.getAttribute("data-sort") === "text" ? 1 : -1);
    sortState = { table: table.id, col: col, dir: dir };
    applySort();
  });

  // --- refreshing the data region in place ---------------------------------------------------
  var status = document.getElementById("refresh-status");
  var autoBox = document.getElementById("auto");
  var busy = false;
  var timer = null;

  function setStatus(text, failed) {
    if (!status) { return; }
    status.textContent = text;
    status.className = failed ? "status error" : "status";
  }

  function partialUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    return url.pathname + url.search;
  }

  function refresh() {
    if (busy) { return Promise.resolve(false); }
    busy = true;
    return fetch(partialUrl(), { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var holder = document.createElement("div");
        holder.innerHTML = html; // the server's own escaped HTML; scripts in it would not run
        var fresh = holder.querySelector("#data");
        if (!fresh) { throw new Error("unexpected answer"); }
        dataRegion().replaceWith(fresh);
        applySort();
        setStatus("", false);
        return true;
      })
      .catch(function (err) {
        setStatus("refresh failed (" + err.message + "), retrying", true);
        return false;
      })
      .then(function (ok) { busy = false; return ok; });
  }

  function schedule() {
    if (timer) { clearInterval(timer); timer = null; }
    var region = dataRegion();
    var seconds = region ? Number(region.getAttribute("data-refresh") || 0) : 0;
    if (autoBox && autoBox.checked && seconds > 0) {
      timer = setInterval(function () { if (!document.hidden) { refresh(); } }, seconds * 1000);
    }
  }

  if (autoBox) {
    try { autoBox.checked = window.localStorage.getItem("tt_auto") !== "off"; } catch (e) { /* storage off */ }
    autoBox.addEventListener("change", function () {
      try { window.localStorage.setItem("tt_auto", autoBox.checked ? "on" : "off"); } catch (e) { /* storage off */ }
      schedule();
      if (autoBox.checked) { refresh(); }
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && autoBox && autoBox.checked) { refresh(); }
  });

  var picker = document.getElementById("model");
  if (picker && picker.form) {
    picker.addEventListener("change", function () { picker.form.submit(); });
  }

  // For tests and the curious: window.tokentrace.refresh() returns a promise of success.
  window.tokentrace = { refresh: refresh };

  var region = dataRegion();
  if (region && zone && region.getAttribute("data-tz") !== zone) {
    refresh(); // first visit: the page was drawn in UTC; redraw it in local time
  }
  schedule();
}());
