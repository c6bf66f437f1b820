"""Alert thresholds: is a model slower than usual, failing, or is the disk filling up?

Three alerts, each a number held against a threshold:

==============  ====================================================  ===================  =======
alert           value                                                 fires when           default
==============  ====================================================  ===================  =======
``regression``  per model: token-weighted ms/token over the last      value ≥ threshold    1.5
                24 h ÷ the same over the 60 days before
                (``tokentrace.efficiency_change``)
``error_rate``  per model: errors ÷ calls over the last               value ≥ threshold    0.05
                ``error_window_hours`` (``tokentrace.efficiency()``)
``disk_cap``    days until the store reaches ``TOKENTRACE_DISK_CAP_GB``  value ≤ threshold   7
                at its growth of the last 7 days (``footprint_summary``,
                the footprint report's ``days_until_cap``)
==============  ====================================================  ===================  =======

A model's ``regression`` and ``error_rate`` fire only with at least ``min_calls``
calls (default 10) behind them: in both windows for the regression (a ratio against a
baseline of three calls says little), in the window for the error rate. An alert
whose value is unknown — a model with no baseline, no disk cap, a store that fits
under its cap — is listed with ``value`` null and never fires; ``detail`` says why.

Thresholds: argument > environment variable > default, a bad value is a
:class:`~tokentrace.config.ConfigError` naming the flag or variable:

``--regression-ratio`` / ``TOKENTRACE_ALERT_REGRESSION_RATIO`` (> 0),
``--error-rate`` / ``TOKENTRACE_ALERT_ERROR_RATE`` (> 0, ≤ 1),
``--error-window-hours`` / ``TOKENTRACE_ALERT_ERROR_WINDOW_HOURS`` (> 0),
``--disk-days`` / ``TOKENTRACE_ALERT_DISK_DAYS`` (≥ 0),
``--min-calls`` / ``TOKENTRACE_ALERT_MIN_CALLS`` (≥ 1).

The evaluation is pure: :func:`read_facts` runs the queries (three report objects,
on one connection), :func:`evaluate` turns those facts into :class:`Alert` values.
``GET /telemetry/alerts``, ``tokentrace alerts``, the dashboard's Alerts panel and the
OTel gauges (:mod:`tokentrace.alert_metrics`) all answer with :func:`check`.

Python::

    from tokentrace import alerts, reports
    with reports.report_connection(dsn) as conn:
        firing = [a for a in alerts.check(conn, alerts.Thresholds.resolve()) if a.firing]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tokentrace import config, reports
from tokentrace.tables import format_bytes

REGRESSION = "regression"
ERROR_RATE = "error_rate"
DISK_CAP = "disk_cap"
ALERT_NAMES = (REGRESSION, ERROR_RATE, DISK_CAP)

# The windows of the tokentrace.efficiency_change view (as the 60-day report shows it).
RECENT_HOURS = 24
BASELINE_DAYS = 60


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When each alert fires; see the module's table."""

    regression_ratio: float = config.DEFAULT_ALERT_REGRESSION_RATIO
    error_rate: float = config.DEFAULT_ALERT_ERROR_RATE
    error_window_hours: float = config.DEFAULT_ALERT_ERROR_WINDOW_HOURS
    disk_days: float = config.DEFAULT_ALERT_DISK_DAYS
    min_calls: int = config.DEFAULT_ALERT_MIN_CALLS

    @classmethod
    def resolve(
        cls,
        *,
        regression_ratio: Any = None,
        error_rate: Any = None,
        error_window_hours: Any = None,
        disk_days: Any = None,
        min_calls: Any = None,
        environ: Mapping[str, str] | None = None,
    ) -> Thresholds:
        """Each threshold from its argument (not None), else its variable, else its default."""
        given = {
            "regression_ratio": regression_ratio,
            "error_rate": error_rate,
            "error_window_hours": error_window_hours,
            "disk_days": disk_days,
            "min_calls": min_calls,
        }
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, (variable, parse, default) in _SETTINGS.items():
            value = given[field]
            if value is not None:
                values[field] = parse(str(value), "--" + field.replace("_", "-"))
                continue
            raw = env.get(variable, "").strip()
            values[field] = parse(raw, variable) if raw else default
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(raw: str, source: str) -> float:
    return config.parse_float(raw, source, minimum=0.0, above=True)


def _rate(raw: str, source: str) -> float:
    return config.parse_float(raw, source, minimum=0.0, above=True, maximum=1.0)


def _hours(raw: str, source: str) -> float:
    return config.parse_float(raw, source, minimum=0.0, above=True, maximum=reports.MAX_HOURS)


def _days(raw: str, source: str) -> float:
    return config.parse_float(raw, source, minimum=0.0)


def _calls(raw: str, source: str) -> int:
    return config.parse_int(raw, source, minimum=1)


# Thresholds field -> (environment variable, parser, default); the flag is the field with dashes.
_SETTINGS: dict[str, tuple[str, Any, Any]] = {
    "regression_ratio": (config.ALERT_REGRESSION_RATIO, _ratio, config.DEFAULT_ALERT_REGRESSION_RATIO),
    "error_rate": (config.ALERT_ERROR_RATE, _rate, config.DEFAULT_ALERT_ERROR_RATE),
    "error_window_hours": (config.ALERT_ERROR_WINDOW_HOURS, _hours,
                           config.DEFAULT_ALERT_ERROR_WINDOW_HOURS),
    "disk_days": (config.ALERT_DISK_DAYS, _days, config.DEFAULT_ALERT_DISK_DAYS),
    "min_calls": (config.ALERT_MIN_CALLS, _calls, config.DEFAULT_ALERT_MIN_CALLS),
}  # fmt: skip


# --- facts: what the reports say ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Change:
    """One row of ``tokentrace.efficiency_change``."""

    model: str
    recent_ms_per_token: float | None
    baseline_ms_per_token: float | None
    ratio: float | None
    recent_calls: int
    baseline_calls: int


@dataclass(frozen=True, slots=True)
class Errors:
    """A model's calls and errors over the error-rate window (``tokentrace.efficiency()``)."""

    model: str
    calls: int
    errors: int


@dataclass(frozen=True, slots=True)
class Disk:
    """The footprint's size, growth and days until the cap (``footprint_summary``)."""

    cap_bytes: int | None
    total_bytes: int
    bytes_per_day: float | None
    projected_bytes: int | None
    fits_within_cap: bool | None
    days_until_cap: float | None


@dataclass(frozen=True, slots=True)
class Facts:
    changes: Sequence[Change]
    errors: Sequence[Errors]
    disk: Disk
    error_window_hours: float


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert for one model (``model`` None for the store as a whole)."""

    name: str
    model: str | None
    value: float | None
    threshold: float
    firing: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- evaluation (pure) ---------------------------------------------------------------------
def _num(value: float) -> str:
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _hours_text(hours: float) -> str:
    return f"{hours:g} h"


def regression(change: Change, t: Thresholds) -> Alert:
    value = change.ratio
    calls = f"{change.recent_calls} and {change.baseline_calls} calls"
    if value is None:
        if change.recent_calls == 0:
            detail = f"no calls in the last {RECENT_HOURS} h"
        elif change.baseline_calls == 0:
            detail = f"no calls in the {BASELINE_DAYS} days before the last {RECENT_HOURS} h to compare with"
        else:
            detail = f"no timed output tokens to compare ({calls})"
        return Alert(REGRESSION, change.model, None, t.regression_ratio, False, detail)
    assert change.recent_ms_per_token is not None and change.baseline_ms_per_token is not None
    detail = (
        f"{_num(change.recent_ms_per_token)} ms/token in the last {RECENT_HOURS} h against "
        f"{_num(change.baseline_ms_per_token)} in the {BASELINE_DAYS} days before ({calls})"
    )
    enough = min(change.recent_calls, change.baseline_calls) >= t.min_calls
    if not enough:
        detail += f"; too few calls to fire (at least {t.min_calls} in each)"
    return Alert(REGRESSION, change.model, value, t.regression_ratio,
                 enough and value >= t.regression_ratio, detail)  # fmt: skip


def error_rate(row: Errors, t: Thresholds, window_hours: float) -> Alert:
    window = _hours_text(window_hours)
    if row.calls == 0:
        detail = f"{_plural(row.errors, 'failed span')} and no calls in the last {window}"
        return Alert(ERROR_RATE, row.model, None, t.error_rate, False, detail)
    value = row.errors / row.calls
    detail = f"{_plural(row.errors, 'error')} in {_plural(row.calls, 'call')} in the last {window}"
    enough = row.calls >= t.min_calls
    if not enough:
        detail += f"; too few calls to fire (at least {t.min_calls})"
    return Alert(ERROR_RATE, row.model, value, t.error_rate, enough and value >= t.error_rate, detail)


def disk_cap(disk: Disk, t: Thresholds) -> Alert:
    if disk.cap_bytes is None:
        return Alert(DISK_CAP, None, None, t.disk_days, False, "no disk cap set (TOKENTRACE_DISK_CAP_GB)")
    cap = format_bytes(disk.cap_bytes)
    size = f"{format_bytes(disk.total_bytes)} of a {cap} cap"
    if disk.fits_within_cap:
        projected = format_bytes(disk.projected_bytes or 0)
        return Alert(DISK_CAP, None, None, t.disk_days, False,
                     f"{size}; settles at {projected} once the retention windows are full: "
                     "never reaches the cap")  # fmt: skip
    days = disk.days_until_cap
    if days is None:
        return Alert(DISK_CAP, None, None, t.disk_days, False, f"{size}, not growing")
    growth = format_bytes(disk.bytes_per_day or 0)
    detail = "cap reached" if days <= 0 else f"reaches it in {days:,.1f} days"
    return Alert(DISK_CAP, None, days, t.disk_days, days <= t.disk_days,
                 f"{size}, growing {growth}/day: {detail}")  # fmt: skip


def evaluate(facts: Facts, thresholds: Thresholds) -> list[Alert]:
    """Every alert the facts allow: regressions and error rates by model, then the disk."""
    found = [regression(c, thresholds) for c in sorted(facts.changes, key=lambda c: c.model)]
    found += [
        error_rate(e, thresholds, facts.error_window_hours)
        for e in sorted(facts.errors, key=lambda e: e.model)
    ]
    found.append(disk_cap(facts.disk, thresholds))
    return found


# --- queries -------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def read_facts(
    conn: psycopg.Connection[Any], thresholds: Thresholds, disk_cap_gb: Any = None
) -> Facts:
    """What the alerts are evaluated on, from the report objects.

    ``disk_cap_gb`` is the cap (None: ``TOKENTRACE_DISK_CAP_GB``, as the footprint
    report reads it; a bad value raises :class:`~tokentrace.reports.ReportError`).
    """
    cap = reports.disk_cap_bytes(disk_cap_gb)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT model, recent_ms_per_token, baseline_ms_per_token, change_ratio,"
            " recent_calls, baseline_calls FROM tokentrace.efficiency_change"
        )
        changes = [
            Change(
                model=str(r["model"]),
                recent_ms_per_token=_float(r["recent_ms_per_token"]),
                baseline_ms_per_token=_float(r["baseline_ms_per_token"]),
                ratio=_float(r["change_ratio"]),
                recent_calls=int(r["recent_calls"]),
                baseline_calls=int(r["baseline_calls"]),
            )
            for r in cur.fetchall()
        ]
        cur.execute(
            "SELECT total_bytes, bytes_per_day, projected_bytes, disk_cap_bytes,"
            " fits_within_cap, days_until_cap FROM tokentrace.footprint_summary(%s)",
            (cap,),
        )
        row = cur.fetchone()
    assert row is not None  # the function returns one row
    disk = Disk(
        cap_bytes=None if row["disk_cap_bytes"] is None else int(row["disk_cap_bytes"]),
        total_bytes=int(row["total_bytes"] or 0),
        bytes_per_day=_float(row["bytes_per_day"]),
        projected_bytes=None if row["projected_bytes"] is None else int(row["projected_bytes"]),
        fits_within_cap=row["fits_within_cap"],
        days_until_cap=_float(row["days_until_cap"]),
    )
    errors = [
        Errors(model=str(r["model"]), calls=int(r["calls"] or 0), errors=int(r["errors"] or 0))
        for r in reports.efficiency(conn, thresholds.error_window_hours)
    ]
    return Facts(changes, errors, disk, thresholds.error_window_hours)


def check(
    conn: psycopg.Connection[Any], thresholds: Thresholds, disk_cap_gb: Any = None
) -> list[Alert]:
    """Every alert, evaluated now over ``conn``."""
    return evaluate(read_facts(conn, thresholds, disk_cap_gb), thresholds)


def payload(found: Sequence[Alert], thresholds: Thresholds) -> dict[str, Any]:
    """The JSON of ``GET /telemetry/alerts`` and ``tokentrace alerts --json``."""
    return {
        "status": "success",
        "alerts": [a.as_json() for a in found],
        "firing": sum(1 for a in found if a.firing),
        "thresholds": thresholds.as_json(),
    }


def report(
    conn: psycopg.Connection[Any], thresholds: Thresholds, disk_cap_gb: Any = None
) -> dict[str, Any]:
    """:func:`check`, as :func:`payload`."""
    return payload(check(conn, thresholds, disk_cap_gb), thresholds)
