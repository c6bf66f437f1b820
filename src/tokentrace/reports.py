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
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tokentrace.config import env_int
from tokentrace.store.connection import connect

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
    timeout_ms = env_int("TOKENTRACE_REPORT_TIMEOUT_MS", 10_000, minimum=1)
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(timeout_ms),))
        conn.execute("SET default_transaction_read_only = on")
        yield conn


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
    """Overall 60-day statistics and per-model trends (the original system's shape)."""
    overall = _rows(conn, "SELECT * FROM tokentrace.stats_60d")[0]
    trends = _rows(conn, "SELECT * FROM tokentrace.model_trends_60d")
    return {
        "overall": overall,
        "model_trends": trends,
        "retention_window_days": overall["retention_window_days"],
    }


def footprint(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Size of every tokentrace relation, the total, and the oldest span's time."""
    relations = _rows(conn, "SELECT * FROM tokentrace.footprint")
    oldest = relations[0].pop("oldest_span") if relations else None
    for rel in relations:
        rel.pop("oldest_span", None)
    total = sum(int(r["total_bytes"]) for r in relations)
    size = _rows(conn, "SELECT pg_size_pretty(%s::bigint) AS s, pg_database_size(current_database()) AS d", (total,))[0]
    return {
        "relations": relations,
        "total_bytes": total,
        "total_size": size["s"],
        "database_bytes": size["d"],
        "oldest_span": oldest,
    }
