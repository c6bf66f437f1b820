"""``tokentrace alerts``: the alerts as a check, for cron, a monitoring agent or a person.

::

    tokentrace alerts                          # every alert, firing ones first
    tokentrace alerts --json                   # what GET /telemetry/alerts answers
    tokentrace alerts --regression-ratio 2 --min-calls 50 --disk-cap-gb 20

Exit status, as a Nagios-style check reads it (without a warning level):

=====  ====================================================================
0      no alert fires
1      at least one alert fires
2      a bad argument or setting (the message names it)
3      the alerts could not be evaluated (database unreachable or refusing)
=====  ====================================================================

Thresholds: each flag, else its ``TOKENTRACE_ALERT_*`` variable, else its default
(:mod:`tokentrace.alerts`); the disk cap: ``--disk-cap-gb``, else
``TOKENTRACE_DISK_CAP_GB``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import psycopg

from tokentrace import alerts, reports
from tokentrace.config import ConfigError
from tokentrace.store.errors import describe
from tokentrace.tables import render

OK, FIRING, USAGE, UNKNOWN = 0, 1, 2, 3

TABLE = (
    ("state", "state"),
    ("name", "alert"),
    ("model", "model"),
    ("value", "value"),
    ("threshold", "threshold"),
)


def add_parser(sub: Any, add_dsn: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "alerts",
        help="check the alert thresholds (exit 1 when one fires)",
        description="Evaluate the alerts (regression ratio, error rate, days until the disk "
        "cap) and print them. Exit status: 0 none fires, 1 some fire, 2 bad setting, "
        "3 cannot evaluate.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable JSON (as GET /telemetry/alerts)")
    p.add_argument("--regression-ratio", metavar="RATIO",
                   help="fire when 24 h ms/token ÷ the 60 days before is at least RATIO "
                   "(default: $TOKENTRACE_ALERT_REGRESSION_RATIO or 1.5)")
    p.add_argument("--error-rate", metavar="FRACTION",
                   help="fire when errors ÷ calls is at least FRACTION "
                   "(default: $TOKENTRACE_ALERT_ERROR_RATE or 0.05)")
    p.add_argument("--error-window-hours", metavar="HOURS",
                   help="the error rate's window (default: $TOKENTRACE_ALERT_ERROR_WINDOW_HOURS or 1)")
    p.add_argument("--disk-days", metavar="DAYS",
                   help="fire when the disk cap is DAYS or fewer days away "
                   "(default: $TOKENTRACE_ALERT_DISK_DAYS or 7)")
    p.add_argument("--min-calls", metavar="N",
                   help="calls a model needs before its alerts fire "
                   "(default: $TOKENTRACE_ALERT_MIN_CALLS or 10)")
    p.add_argument("--disk-cap-gb", metavar="GB",
                   help="the disk cap in GB of 10^9 bytes (default: $TOKENTRACE_DISK_CAP_GB; none)")
    add_dsn(p)
    p.set_defaults(func=run)


def thresholds(args: argparse.Namespace) -> alerts.Thresholds:
    return alerts.Thresholds.resolve(
        regression_ratio=args.regression_ratio,
        error_rate=args.error_rate,
        error_window_hours=args.error_window_hours,
        disk_days=args.disk_days,
        min_calls=args.min_calls,
    )


def run(args: argparse.Namespace) -> int:
    from tokentrace.store.connection import resolve_dsn
    from tokentrace.store.migrate import MigrationError, migrate_if_needed

    try:
        chosen = thresholds(args)
        reports.disk_cap_bytes(args.disk_cap_gb)  # a bad cap is a usage error, before connecting
    except (ConfigError, reports.ReportError) as exc:
        print(f"tokentrace alerts: {exc}", file=sys.stderr)
        return USAGE
    try:
        dsn = resolve_dsn(getattr(args, "dsn", None))
        migrate_if_needed(dsn)
        with reports.report_connection(dsn) as conn:
            found = alerts.check(conn, chosen, args.disk_cap_gb)
    except (psycopg.Error, MigrationError, OSError) as exc:
        print(f"tokentrace alerts: cannot evaluate the alerts: {describe(exc)}", file=sys.stderr)
        return UNKNOWN
    if args.json:
        print(json.dumps(alerts.payload(found, chosen), indent=2))
    else:
        print(summary(found, chosen))
    return FIRING if any(a.firing for a in found) else OK


def summary(found: list[alerts.Alert], t: alerts.Thresholds) -> str:
    """The text report: a line saying how many fire, then one row per alert, firing first."""
    firing = sum(1 for a in found if a.firing)
    ordered = sorted(found, key=lambda a: not a.firing)
    head = (
        f"tokentrace alerts: {firing} firing of {len(found)} "
        f"(regression ≥ {t.regression_ratio:g}×, error rate ≥ {t.error_rate:g} over "
        f"{t.error_window_hours:g} h, disk cap ≤ {t.disk_days:g} days away; "
        f"at least {t.min_calls} calls)"
    )
    rows = [
        {
            "state": "FIRING" if a.firing else "ok",
            "name": a.name,
            "model": a.model or "-",
            "value": "-" if a.value is None else f"{a.value:.4g}",
            "threshold": f"{a.threshold:g}",
        }
        for a in ordered
    ]
    # The table aligns the figures; each detail follows its row, left as written.
    lines = render(rows, TABLE).splitlines()
    details = ["detail", "------"] + [a.detail for a in ordered]
    return "\n".join([head] + [f"{line}  {d}" for line, d in zip(lines, details)])
