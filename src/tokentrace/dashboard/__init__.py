"""The dashboard: one server-rendered page at ``GET /`` of ``tokentrace serve``.

Open ``http://127.0.0.1:4318/`` (or wherever ``tokentrace serve`` listens) and see,
for the last hour, 24 hours, 7 days or 60 days and for all models or one:

* **Latency per output token** over time, one line per model (token-weighted:
  total inference time over output tokens), with a band up to the p95 of calls;
* **Prefill vs decode** ms/token per model, where the server reports them;
* **Model loads**: average load time, count, and the share of each model's busy
  time spent loading (cold loads);
* **Calls, tokens and errors** per model, in a sortable table;
* the **60-day trend** per model: a daily sparkline, the 60-day baseline, the last
  24 hours and the change between them (a slowdown of 10 % or more is flagged);
* the **storage footprint**: size per relation, growth per day, projected size at
  the retention window and days until ``TOKENTRACE_DISK_CAP_GB``.

The page works with no network at all: styles, script, charts (inline SVG drawn
in Python) and icon are in the HTML itself, and its Content-Security-Policy lets
the browser talk to this server only. Times are shown in the viewer's time zone.
A small script redraws the figures every 30 s without reloading the page (switch
it off on the page, or with ``?refresh=0``), sorts tables, and submits the model
filter; without it the page still shows everything.

Every figure comes from the documented SQL report objects (``efficiency()``,
``efficiency_series()``, ``stats_60d``, ``model_trends_60d``, ``footprint``),
never from a query of its own, so it agrees with ``psql`` and ``/telemetry/*``.

Python::

    from tokentrace.dashboard import handle_dashboard, render_page, series
    status, headers, body = handle_dashboard("window=7d", dsn)
    with tokentrace.reports.report_connection(dsn) as conn:
        html = render_page(conn, window="24h", model=None)
        rows = series(conn, hours=24, buckets=48)
"""

from __future__ import annotations

from tokentrace.dashboard.data import WINDOWS, series
from tokentrace.dashboard.handler import dashboard_response, handle_dashboard
from tokentrace.dashboard.page import render_page

__all__ = ["WINDOWS", "dashboard_response", "handle_dashboard", "render_page", "series"]
