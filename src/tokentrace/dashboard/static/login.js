// tokentrace dashboard sign-in: keeps the bearer token in a same-site cookie for this
// page (browsers cannot send an Authorization header when following a link), then reloads.
(function () {
  "use strict";
  var form = document.getElementById("login");
  if (!form) { return; }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var token = document.getElementById("token").value;
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = "tokentrace_token=" + encodeURIComponent(token) + "; path=/; SameSite=Strict" + secure;
    window.location.reload();
  });
}());
