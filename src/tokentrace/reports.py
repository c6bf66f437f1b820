"""The three reports — efficiency, 60-day statistics, footprint — as plain data.

The CLI (``tokentrace report …``), the HTTP endpoints (``/telemetry/…``) and the
drop-in :class:`tokentrace.compat.Telemetry` all call these functions, which read
the documented SQL objects (``tokentrace.efficiency()``, ``stats_60d``,
``model_trends_60d``, ``footprint``) and return JSON-ready dictionaries: numbers
stay numbers, times are ISO 8601 strings in UTC, sizes for people are decimal
(``"8.3 MB"``, 1 MB = 10⁶ bytes, see :func:`tokentrace.tables.format_bytes`) beside
their byte counts.

:func:`sixty_day` and :func:`footprint` carry the original system's keys, with its
types, beside tokentrace's own (``docs/reports.md`` lists every key of both).

Every report query runs with a statement timeout (``TOKENTRACE_REPORT_TIMEOUT_MS``,
default 10 s) so a slow report cannot hold a connection forever.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from tokentrace.config import env_int
from tokentrace.store.connection import connect
from tokentrace.store.pool import ConnectionPool
from tokentrace.tables import format_bytes

MAX_HOURS = 24 * 400

EFFICIENCY_COLUMNS = (
    "model", "calls", "input_tokens", "output_tokens", "weighted_ms_per_token",
    "p50_ms_per_token", "p95_ms_per_token", "decode_ms_per_token", "loads",
    "avg_load_ms", "errors",
)  # fmt: skip


class ReportError(ValueError):
    """A report parameter that cannot be used (the message says why)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _rows(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return [{k: _jsonable(v) for k, v in row.items()} for row in cur.fetchall()]


def check_hours(hours: Any) -> float:
    """A report window in hours, validated (``ReportError`` says what is wrong)."""
    try:
        value = float(hours)
    except (TypeError, ValueError):
        raise ReportError(f"hours must be a number, not {hours!r}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_HOURS:
        raise ReportError(f"hours must be greater than 0 and at most {MAX_HOURS}, not {hours!r}")
    return value


@contextmanager
def report_connection(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A read-only connection with the report statement timeout applied."""
    with open_report_connection(dsn) as conn:
        yield conn


def open_report_connection(dsn: str) -> psycopg.Connection[Any]:
    """What :func:`report_connection` yields, for the caller to close."""
    timeout_ms = env_int("TOKENTRACE_REPORT_TIMEOUT_MS", 10_000, minimum=1)
    conn = connect(dsn, autocommit=True)
    try:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(timeout_ms),))
        conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        conn.close()
        raise
    return conn


def report_pool(dsn: str) -> ConnectionPool:
    """Report connections kept between requests (see :mod:`tokentrace.store.pool`)."""
    return ConnectionPool(lambda: open_report_connection(dsn))


def efficiency(
    conn: psycopg.Connection[Any], hours: Any = 24, model: str | None = None
) -> list[dict[str, Any]]:
    """One row per model over the last ``hours``: token-weighted ms/token and more."""
    window = dt.timedelta(hours=check_hours(hours))
    return _rows(
        conn,
        "SELECT * FROM tokentrace.efficiency(%s, %s)",
        (window, model or None),
    )


def sixty_day(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Overall 60-day statistics and per-model trends (the original system's shape).

    Each trend names its model twice: ``component`` (the original's key) and
    ``model``. ``efficiency_change`` adds, per model, the last 24 hours'
    token-weighted ms/token against the 60 days before them (``change_ratio`` 1.5 =
    50 % slower now).
    """
    overall = _rows(conn, "SELECT * FROM tokentrace.stats_60d")[0]
    trends = _rows(conn, "SELECT * FROM tokentrace.model_trends_60d")
    trends = [{"component": t["model"], **t} for t in trends]  # the original's name for the model
    change = _rows(conn, "SELECT * FROM tokentrace.efficiency_change")
    return {
        "overall": overall,
        "model_trends": trends,
        "retention_window_days": overall["retention_window_days"],
        "efficiency_change": change,
    }


def disk_cap_bytes(gigabytes: Any = None) -> int | None:
    """A disk cap in bytes: argument > ``TOKENTRACE_DISK_CAP_GB`` > none (1 GB = 10^9 bytes)."""
    source = "disk cap"
    if gigabytes is None:
        gigabytes = os.environ.get("TOKENTRACE_DISK_CAP_GB", "").strip() or None
        source = "TOKENTRACE_DISK_CAP_GB"
        if gigabytes is None:
            return None
    try:
        value = float(gigabytes)
    except (TypeError, ValueError):
        raise ReportError(f"{source} must be a number of gigabytes, not {gigabytes!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ReportError(f"{source} must be a positive number of gigabytes, not {gigabytes!r}")
    return int(value * 1e9)


def footprint(
    conn: psycopg.Connection[Any], exact: bool = False, disk_cap_gb: Any = None
) -> dict[str, Any]:
    """Size of every tokentrace relation, the total, its growth and where it is heading.

    Row counts are the catalog's estimates (fast at any size); ``exact=True`` adds
    ``exact_rows`` per relation, counted (a full scan: slow on a big store), and
    makes ``row_counts`` those counts (``row_counts_source`` says which). Growth is
    measured over the last 7 days; ``projected_bytes`` is the size the store settles
    at once the retention windows are full; ``days_until_cap`` is set when a disk cap
    (``disk_cap_gb`` or ``TOKENTRACE_DISK_CAP_GB``) will be reached, ``fits_within_cap``
    says whether it ever will.
    """
    cap = disk_cap_bytes(disk_cap_gb)
    monitored_at = time.time()
    relations = _rows(conn, "SELECT * FROM tokentrace.footprint")
    for rel in relations:
        rel.pop("oldest_span", None)
        rel.pop("newest_span", None)
        # The view's total_size is pg_size_pretty's (1024-based "kB"): one system per report.
        rel["total_size"] = format_bytes(rel["total_bytes"])
        if exact:
            rel["exact_rows"] = _count(conn, str(rel["relation"]))
    summary = _rows(conn, "SELECT * FROM tokentrace.footprint_summary(%s)", (cap,))[0]
    total = sum(int(r["total_bytes"]) for r in relations)
    database = _rows(conn, "SELECT pg_database_size(current_database()) AS d")[0]["d"]
    rows_key = "exact_rows" if exact else "row_estimate"
    return {
        # The original system's keys, with its types.
        "table_sizes": [
            {
                "tablename": r["relation"],
                "total_size": r["total_size"],
                "size_bytes": int(r["total_bytes"]),
            }
            for r in relations
        ],
        "row_counts": {str(r["relation"]): int(r[rows_key]) for r in relations},
        "oldest_telemetry_record": summary["oldest_span"],
        "monitored_at": f"{monitored_at:.6f}",
        # tokentrace's.
        "row_counts_source": "exact" if exact else "estimated",
        "relations": relations,
        "total_bytes": total,
        "total_size": format_bytes(total),
        "database_bytes": database,
        "oldest_span": summary["oldest_span"],
        "newest_span": summary["newest_span"],
        "spans_per_day": summary["spans_per_day"],
        "bytes_per_day": summary["bytes_per_day"],
        "retention_days": summary["retention_days"],
        "rollup_retention_days": summary["rollup_retention_days"],
        "projected_bytes": summary["projected_bytes"],
        "projected_size": format_bytes(summary["projected_bytes"]),
        "disk_cap_bytes": summary["disk_cap_bytes"],
        "fits_within_cap": summary["fits_within_cap"],
        "days_until_cap": summary["days_until_cap"],
    }


def _count(conn: psycopg.Connection[Any], relation: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("tokentrace", relation))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0
