"""What the page shows, read from the report functions and views only.

:func:`series` wraps ``tokentrace.efficiency_series()`` (``sql/0020_series.sql``);
:func:`gather` collects everything one page needs through it and through
:mod:`tokentrace.reports` (``efficiency()``, ``stats_60d``, ``model_trends_60d``,
``footprint``), ``expected_latency()`` (:mod:`tokentrace.expected`) and the alerts through
:mod:`tokentrace.alerts`. Nothing here queries ``tokentrace.spans`` directly, so the page
says exactly what ``psql`` and ``/telemetry/*`` say.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tokentrace import reports
from tokentrace.dashboard.routing import ranking
from tokentrace.expected import Estimate
from tokentrace.dashboard import alerts_panel
from tokentrace.dashboard.alerts_panel import AlertsPanel

MAX_BUCKETS = 1000
TREND_HOURS = 24 * 60
RECENT_HOURS = 24
_GB = 10**9


@dataclass(frozen=True)
class Window:
    """A window the page offers: its query value, its label, its length and chart buckets."""

    key: str
    label: str
    hours: float
    buckets: int


WINDOWS: dict[str, Window] = {
    w.key: w
    for w in (
        Window("1h", "1 h", 1, 30),  # 2-minute buckets
        Window("24h", "24 h", 24, 48),  # 30 minutes
        Window("7d", "7 d", 24 * 7, 42),  # 4 hours
        Window("60d", "60 d", TREND_HOURS, 60),  # 1 day
    )
}
DEFAULT_WINDOW = WINDOWS["24h"]


def series(
    conn: psycopg.Connection[Any],
    hours: Any = 24,
    model: str | None = None,
    *,
    buckets: int = 48,
    start: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Efficiency per model and time bucket over the last ``hours``, in ``buckets`` equal buckets.

    Rows as ``tokentrace.efficiency_series()`` returns them (``bucket_start`` is an
    aware ``datetime``; buckets without spans are absent). ``buckets=1`` gives each
    model's totals for the whole window. The buckets are laid from ``now() - hours``,
    or from ``start`` when given (see :func:`chart_range`); spans dated later than the
    window (clock skew) land in the buckets after it either way.
    """
    window = dt.timedelta(hours=reports.check_hours(hours))
    if not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise reports.ReportError(f"buckets must be a whole number from 1 to {MAX_BUCKETS}, not {buckets!r}")
    # Whole microseconds, so that `buckets` buckets tile the window exactly.
    bucket = dt.timedelta(microseconds=math.ceil(window / dt.timedelta(microseconds=1) / buckets))
    if start is None:
        query = "SELECT * FROM tokentrace.efficiency_series(%s, %s, %s)"
        params: tuple[Any, ...] = (window, bucket, model or None)
    else:
        query = "SELECT * FROM tokentrace.efficiency_series_range(%s, 'infinity', %s, %s)"
        params = (start, bucket, model or None)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


# The rollup grains (sql/0003_rollups.sql), coarsest first.
_GRAINS = (dt.timedelta(days=1), dt.timedelta(hours=1), dt.timedelta(minutes=5))
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)  # the grains' origin (bucket_floor)


def chart_range(window: Window, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The ``[start, end)`` a chart of ``window`` covers at ``now``.

    ``now`` rounded up to the coarsest rollup grain that divides one of the chart's
    buckets is the end, and the window before it the start: every bucket is then whole
    rollup rows, which ``efficiency_series_range()`` reads instead of raw spans (at
    10 M spans, 0.1 s against 30 s for 60 days). Charts whose buckets no grain divides
    (the hour's 2-minute buckets) end at ``now`` and read raw spans.
    """
    length = dt.timedelta(hours=window.hours)
    bucket = length / window.buckets
    for grain in _GRAINS:
        if bucket % grain == dt.timedelta(0) and length % grain == dt.timedelta(0):
            over = (now - _EPOCH) % grain
            end = now if over == dt.timedelta(0) else now + (grain - over)
            return end - length, end
    return now - length, now


@dataclass(frozen=True)
class Trend:
    """One model over 60 days against its last 24 hours (the regression signal)."""

    model: str
    baseline: float | None  # token-weighted ms/token over 60 days
    recent: float | None  # token-weighted ms/token over the last 24 hours
    calls: int
    tokens: int

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.recent is None or self.baseline <= 0:
            return None
        return self.recent / self.baseline


@dataclass(frozen=True)
class Storage:
    """The footprint, and when it fills the disk cap at the current growth."""

    relations: list[dict[str, Any]]
    total_bytes: int
    database_bytes: int | None
    oldest_span: dt.datetime | None
    growth_per_day: float | None
    growth_measured: bool  # False: estimated from the total and the oldest span's age
    cap_bytes: int | None
    retention_days: int
    reported_projection: float | None = None  # from the footprint report, where it has one

    @property
    def projected_bytes(self) -> float | None:
        """Size once the retention windows are full, at the current growth."""
        if self.reported_projection is not None:
            return self.reported_projection
        if self.growth_per_day is None:
            return None
        return max(self.growth_per_day * self.retention_days, float(self.total_bytes))

    @property
    def fits_cap(self) -> bool | None:
        """True when the projected size stays under the cap (the cap is never reached)."""
        if self.cap_bytes is None or self.projected_bytes is None:
            return None
        return self.projected_bytes <= self.cap_bytes

    @property
    def days_until_cap(self) -> float | None:
        """Days until the tokentrace data reaches the cap; None without a cap or if it fits."""
        if self.cap_bytes is None or self.fits_cap:
            return None
        room = self.cap_bytes - self.total_bytes
        if room <= 0:
            return 0.0
        if not self.growth_per_day or self.growth_per_day <= 0:
            return None
        return room / self.growth_per_day


@dataclass
class PageData:
    """Everything one rendering of the page needs."""

    window: Window
    model: str | None
    now: dt.datetime
    start: dt.datetime  # the charts' window: ``chart_range(window, now)``
    end: dt.datetime
    models: list[str]  # every model known, in colour order (a filter does not change colours)
    efficiency: list[dict[str, Any]]
    series: list[dict[str, Any]]
    totals: dict[str, dict[str, Any]]
    trends: list[Trend]
    trend_series: list[dict[str, Any]]
    overall: dict[str, Any]
    storage: Storage
    notes: list[str] = field(default_factory=list)
    routing: list[Estimate] = field(default_factory=list)  # "Which model, now?"
    route: tuple[int, int] = (500, 200)  # the request size it ranks for (prompt, output tokens)
    alerts: AlertsPanel | None = None  # None: not gathered (the panel is left out)

    @property
    def colour(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.models)}

    @property
    def has_spans(self) -> bool:
        return int(self.overall.get("total_measurements") or 0) > 0 or bool(self.efficiency)


def _float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _trends(
    sixty: Mapping[str, Any],
    recent_rows: list[dict[str, Any]],
    changes: list[dict[str, Any]] | None,
    model: str | None,
) -> list[Trend]:
    """Per model: the 60-day figures, and the last 24 hours against the baseline.

    Where the 60-day report carries ``efficiency_change`` (``changes``), the baseline
    is the 60 days before the last 24 hours, as that report defines it; otherwise the
    60-day figure of ``model_trends_60d``.
    """
    recent = {r["model"]: _float(r["weighted_ms_per_token"]) for r in recent_rows}
    change = {r["model"]: r for r in changes or []}
    out = []
    for row in sixty["model_trends"]:
        name = row["model"]
        if model and name != model:
            continue
        baseline = _float(row.get("avg_efficiency"))
        latest = recent.get(name)
        if name in change:
            baseline = _float(change[name].get("baseline_ms_per_token"))
            latest = _float(change[name].get("recent_ms_per_token"))
        out.append(Trend(
            model=name,
            baseline=baseline,
            recent=latest,
            calls=int(row.get("measurement_count") or 0),
            tokens=int(row.get("total_tokens_processed") or 0),
        ))  # fmt: skip
    return out


def disk_cap_bytes(environ: Mapping[str, str] | None = None) -> int | None:
    """``TOKENTRACE_DISK_CAP_GB`` in bytes (1 GB = 10⁹ bytes), or None when unset or unusable.

    Only for a footprint report that does not state the cap itself.
    """
    raw = (os.environ if environ is None else environ).get("TOKENTRACE_DISK_CAP_GB", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value * _GB) if math.isfinite(value) and value > 0 else None


def storage(foot: Mapping[str, Any], now: dt.datetime, retention_days: int) -> Storage:
    """The footprint report as the page shows it.

    The report's own growth (``bytes_per_day``), projection (``projected_bytes``) and
    cap (``disk_cap_bytes``) are used where it has them. A footprint without them
    (the core schema) gets growth estimated as the total over the oldest span's age,
    labelled as an estimate, and the cap from ``TOKENTRACE_DISK_CAP_GB``.
    """
    total = int(foot.get("total_bytes") or 0)
    oldest = _parse_time(foot.get("oldest_span"))
    measured = _float(foot.get("bytes_per_day"))
    growth = measured
    if growth is None and oldest is not None:
        age_days = max((now - oldest).total_seconds() / 86_400, 1.0)
        growth = total / age_days
    cap = foot["disk_cap_bytes"] if "disk_cap_bytes" in foot else disk_cap_bytes()
    return Storage(
        relations=list(foot.get("relations") or []),
        total_bytes=total,
        database_bytes=None if foot.get("database_bytes") is None else int(foot["database_bytes"]),
        oldest_span=oldest,
        growth_per_day=growth,
        growth_measured=measured is not None,
        cap_bytes=None if cap is None else int(cap),
        retention_days=retention_days,
        reported_projection=_float(foot.get("projected_bytes")),
    )


def gather(conn: psycopg.Connection[Any], window: Window, model: str | None, now: dt.datetime,
           route: tuple[int, int] = (500, 200)) -> PageData:  # fmt: skip
    """Read every report the page shows (a handful of queries, all through report objects)."""
    efficiency = reports.efficiency(conn, window.hours, model)
    start, end = chart_range(window, now)
    buckets = series(conn, window.hours, model, buckets=window.buckets, start=start)
    totals: dict[str, dict[str, Any]] = {}
    for row in series(conn, window.hours, model, buckets=1, start=start):
        # The first bucket is the window; a second holds spans dated after it (clock skew).
        totals.setdefault(row["model"], row)
    sixty = reports.sixty_day(conn)
    recent = efficiency if window.hours == RECENT_HOURS else reports.efficiency(conn, RECENT_HOURS, model)
    if window.hours == TREND_HOURS:
        trend_series = buckets
    else:
        trend = WINDOWS["60d"]
        trend_start, _ = chart_range(trend, now)
        trend_series = series(conn, TREND_HOURS, model, buckets=trend.buckets, start=trend_start)
    retention = int(sixty["retention_window_days"] or 60)
    known = {r["model"] for r in sixty["model_trends"]} | {r["model"] for r in efficiency}
    return PageData(
        window=window,
        model=model,
        now=now,
        start=start,
        end=end,
        models=sorted(known),
        efficiency=efficiency,
        series=buckets,
        totals=totals,
        trends=_trends(sixty, recent, sixty.get("efficiency_change"), model),
        trend_series=trend_series,
        overall=sixty["overall"],
        storage=storage(reports.footprint(conn), now, retention),
        routing=ranking(conn, route[0], route[1], model),
        route=route,
        alerts=alerts_panel.gather(conn, model),
    )
