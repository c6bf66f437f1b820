"""The three reports — efficiency, 60-day statistics, footprint — as plain data.

The CLI (``tokentrace report …``), the HTTP endpoints (``/telemetry/…``) and the
drop-in :class:`tokentrace.compat.Telemetry` all call these functions, which read
the documented SQL objects (``tokentrace.efficiency()``, ``stats_60d``,
``model_trends_60d``, ``footprint``) and return JSON-ready dictionaries: numbers
stay numbers, times are ISO 8601 strings in UTC.

Every report query runs with a statement timeout (``TOKENTRACE_REPORT_TIMEOUT_MS``,
default 10 s) so a slow report cannot hold a connection forever.
"""

from __future__ import annotations

import datetime as dt
import math
import os
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

    ``efficiency_change`` adds, per model, the last 24 hours' token-weighted ms/token
    against the 60 days before them (``change_ratio`` 1.5 = 50 % slower now).
    """
    overall = _rows(conn, "SELECT * FROM tokentrace.stats_60d")[0]
    trends = _rows(conn, "SELECT * FROM tokentrace.model_trends_60d")
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
    ``exact_rows`` per relation, counted (a full scan: slow on a big store). Growth is
    measured over the last 7 days; ``projected_bytes`` is the size the store settles
    at once the retention windows are full; ``days_until_cap`` is set when a disk cap
    (``disk_cap_gb`` or ``TOKENTRACE_DISK_CAP_GB``) will be reached, ``fits_within_cap``
    says whether it ever will.
    """
    cap = disk_cap_bytes(disk_cap_gb)
    relations = _rows(conn, "SELECT * FROM tokentrace.footprint")
    for rel in relations:
        rel.pop("oldest_span", None)
        rel.pop("newest_span", None)
        if exact:
            rel["exact_rows"] = _count(conn, str(rel["relation"]))
    summary = _rows(conn, "SELECT * FROM tokentrace.footprint_summary(%s)", (cap,))[0]
    total = sum(int(r["total_bytes"]) for r in relations)
    size = _rows(
        conn,
        "SELECT pg_size_pretty(%s::bigint) AS s, pg_size_pretty(%s::bigint) AS p, "
        "pg_database_size(current_database()) AS d",
        (total, summary["projected_bytes"]),
    )[0]
    return {
        "relations": relations,
        "total_bytes": total,
        "total_size": size["s"],
        "database_bytes": size["d"],
        "oldest_span": summary["oldest_span"],
        "newest_span": summary["newest_span"],
        "row_counts": "exact" if exact else "estimated",
        "spans_per_day": summary["spans_per_day"],
        "bytes_per_day": summary["bytes_per_day"],
        "retention_days": summary["retention_days"],
        "rollup_retention_days": summary["rollup_retention_days"],
        "projected_bytes": summary["projected_bytes"],
        "projected_size": size["p"],
        "disk_cap_bytes": summary["disk_cap_bytes"],
        "fits_within_cap": summary["fits_within_cap"],
        "days_until_cap": summary["days_until_cap"],
    }


def _count(conn: psycopg.Connection[Any], relation: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("tokentrace", relation))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0
