"""Retention: raw spans by whole day partitions, rollups kept longer, on a schedule.

Raw spans live in one partition per UTC day (``tokentrace.spans_YYYYMMDD``).
Pruning drops every partition that lies wholly before ``now − retention``: no
row-by-row ``DELETE``, no WAL per row, no ``VACUUM``, no table bloat, and no
``count(*)`` of the day either (the spans reported come from the day's 5-minute
rollups, deleted with it; ``exact_counts=True`` counts instead) — what it costs is
the filesystem handing the day's files back and the day's few thousand 5-minute
rollup rows. The
rollups the reports read (``tokentrace.span_rollups``) are kept longer, so 60-day
trends and longer windows still answer once the raw spans are gone:

=====================================  ===========================================  =======
environment variable                   meaning                                      default
=====================================  ===========================================  =======
``TOKENTRACE_RETENTION_DAYS``          days of raw spans (and 5-minute rollups)     60
``TOKENTRACE_ROLLUP_RETENTION_DAYS``   days of hourly and daily rollups             400
``TOKENTRACE_PRUNE_INTERVAL_HOURS``    how often ``tokentrace serve`` prunes;       24
                                       ``0`` turns the schedule off
=====================================  ===========================================  =======

The rollup retention is at least the raw retention: when
``TOKENTRACE_ROLLUP_RETENTION_DAYS`` is unset it is ``max(400, raw retention)``; a
smaller explicit value is a :class:`~tokentrace.config.ConfigError`.

By hand::

    tokentrace prune                                  # the environment's retention
    tokentrace prune --retention-days 30 --rollup-retention-days 365 --json

From code (what ``tokentrace serve`` runs)::

    from tokentrace.retention import PruneScheduler, prune

    result = prune(dsn)                 # PruneResult: what was dropped
    print(result.summary())
    scheduler = PruneScheduler(dsn, every_s=24 * 3600)
    scheduler.start()                   # first run after `first_delay_s`, then every `every_s`
    ...
    scheduler.stop()

The scheduler logs each run at INFO on the ``tokentrace.retention`` logger (one line
per dropped partition and a summary) and a failed run at WARNING; it retries a
failed run sooner (``retry_s``) and never stops the server. Several ``serve``
processes may each run one: ``tokentrace.prune()`` serializes itself with an
advisory lock, so the second finds nothing left to drop.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from tokentrace import config
from tokentrace.config import ConfigError, env_int, redact
from tokentrace.store.connection import connect

_log = logging.getLogger(__name__)

DEFAULT_ROLLUP_RETENTION_DAYS = 400
DEFAULT_PRUNE_INTERVAL_HOURS = 24.0
_PRUNE_SQL = (
    "SELECT partition_name, day, spans, rollup_rows, kind FROM tokentrace.prune(%s, %s, %s) "
    "ORDER BY kind, day, partition_name NULLS LAST"
)


@dataclass(frozen=True, slots=True)
class PrunedDay:
    """What one prune removed for one UTC day.

    ``kind`` is ``"raw"`` (the day's partition, if it still existed, and its
    5-minute rollups) or ``"rollup"`` (hourly and daily rollups past their own
    retention; ``spans`` is how many spans they summed).
    """

    kind: str
    day: dt.date
    partition: str | None
    spans: int
    rollup_rows: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    """The outcome of one :func:`prune`."""

    retention_days: int
    rollup_retention_days: int
    days: tuple[PrunedDay, ...]
    exact_counts: bool = False

    @property
    def partitions(self) -> list[PrunedDay]:
        """The day partitions of raw spans that were dropped."""
        return [d for d in self.days if d.kind == "raw" and d.partition is not None]

    @property
    def spans_removed(self) -> int:
        return sum(d.spans for d in self.days if d.kind == "raw")

    @property
    def rollup_rows_removed(self) -> int:
        return sum(d.rollup_rows for d in self.days)

    def summary(self) -> str:
        """One line saying what was removed (the CLI prints it; the scheduler logs it)."""
        text = (
            f"pruned {len(self.partitions)} day partition(s), {self.spans_removed:,} span(s) "
            f"older than {self.retention_days} days"
        )
        expired = sum(d.rollup_rows for d in self.days if d.kind == "rollup")
        return (
            f"{text}; {self.rollup_rows_removed:,} rollup row(s) removed "
            f"({expired:,} older than {self.rollup_retention_days} days)"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "retention_days": self.retention_days,
            "rollup_retention_days": self.rollup_retention_days,
            "removed": [
                {
                    "partition": d.partition,
                    "day": d.day.isoformat(),
                    "spans": d.spans,
                    "rollup_rows": d.rollup_rows,
                }
                for d in self.partitions
            ],
            "removed_rollups": [
                {
                    "kind": d.kind,
                    "day": d.day.isoformat(),
                    "spans": d.spans,
                    "rollup_rows": d.rollup_rows,
                }
                for d in self.days
                if d.partition is None
            ],
            "spans_removed": self.spans_removed,
            "span_counts": "exact" if self.exact_counts else "rollups",
            "rollup_rows_removed": self.rollup_rows_removed,
        }


def resolve_rollup_retention(value: int | None = None, raw_days: int | None = None) -> int:
    """Days of hourly and daily rollups: argument > environment > ``max(400, raw_days)``."""
    floor = config.retention_days(raw_days)
    if value is None:
        value = env_int("TOKENTRACE_ROLLUP_RETENTION_DAYS", 0, minimum=1)
        source = "TOKENTRACE_ROLLUP_RETENTION_DAYS"
        if value == 0:
            return max(DEFAULT_ROLLUP_RETENTION_DAYS, floor)
    else:
        source = "rollup retention"
    if value < floor:
        raise ConfigError(
            f"{source} ({value} days) must be at least the raw retention ({floor} days)"
        )
    return value


def prune_interval_hours(
    value: float | None = None, environ: Mapping[str, str] | None = None
) -> float:
    """Hours between scheduled prunes: argument > ``TOKENTRACE_PRUNE_INTERVAL_HOURS`` > 24.

    ``0`` means "do not prune on a schedule".
    """
    source = "prune interval"
    if value is None:
        raw = (
            (os.environ if environ is None else environ)
            .get("TOKENTRACE_PRUNE_INTERVAL_HOURS", "")
            .strip()
        )
        if not raw:
            return DEFAULT_PRUNE_INTERVAL_HOURS
        source = "TOKENTRACE_PRUNE_INTERVAL_HOURS"
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{source}={raw!r} is not a number of hours") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{source} must be 0 (off) or a positive number of hours, not {value!r}")
    return value


def prune(
    dsn: str,
    retention_days: int | None = None,
    rollup_retention_days: int | None = None,
    *,
    exact_counts: bool = False,
) -> PruneResult:
    """Drop expired raw day partitions and expired rollups now; say what went.

    The spans of a dropped day are reported from its 5-minute rollups, which the
    prune deletes anyway (spans with a model; exact whenever spans were written
    through ``tokentrace.spans``). ``exact_counts=True`` counts each partition with
    ``count(*)`` before dropping it instead: every span stored, at the price of
    reading the whole day (about as long again as the drop itself).
    """
    days = config.retention_days(retention_days)
    rollup_days = resolve_rollup_retention(rollup_retention_days, days)
    with connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            _PRUNE_SQL,
            (dt.timedelta(days=days), dt.timedelta(days=rollup_days), exact_counts),
        ).fetchall()
    pruned = tuple(_pruned_day(row) for row in rows)
    return PruneResult(
        retention_days=days,
        rollup_retention_days=rollup_days,
        days=pruned,
        exact_counts=exact_counts,
    )


def _pruned_day(row: tuple[Any, ...]) -> PrunedDay:
    name, day, spans, rollup_rows, kind = row
    return PrunedDay(
        kind=str(kind), day=day, partition=name, spans=int(spans), rollup_rows=int(rollup_rows)
    )


class PruneScheduler:
    """Runs :func:`prune` in a daemon thread: after ``first_delay_s``, then every ``every_s``.

    Retention settings are resolved (and checked) when the scheduler is built, so a
    bad value stops ``serve`` at startup rather than a day later.
    """

    def __init__(
        self,
        dsn: str,
        every_s: float = DEFAULT_PRUNE_INTERVAL_HOURS * 3600,
        retention_days: int | None = None,
        rollup_retention_days: int | None = None,
        *,
        first_delay_s: float = 60.0,
        retry_s: float = 300.0,
    ) -> None:
        if not every_s > 0:
            raise ConfigError(f"prune interval must be positive, not {every_s!r} seconds")
        self._dsn = dsn
        self.every_s = every_s
        self.retention_days = config.retention_days(retention_days)
        self.rollup_retention_days = resolve_rollup_retention(
            rollup_retention_days, self.retention_days
        )
        self._first_delay_s = max(first_delay_s, 0.0)
        self._retry_s = max(min(retry_s, every_s), 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.failures = 0
        self.last_result: PruneResult | None = None

    def start(self) -> None:
        """Start the schedule (once; later calls do nothing)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="tokentrace-prune", daemon=True)
        self._thread.start()
        _log.info(
            "pruning every %.3g h: raw spans after %d days, rollups after %d days",
            self.every_s / 3600,
            self.retention_days,
            self.rollup_retention_days,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the schedule; waits up to ``timeout`` s for a prune in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> PruneResult | None:
        """Prune now and log the outcome; None (and a warning) when it failed."""
        try:
            result = prune(self._dsn, self.retention_days, self.rollup_retention_days)
        except (psycopg.Error, OSError) as exc:
            self.failures += 1
            _log.warning("scheduled prune failed: %s", redact(str(exc)).strip())
            return None
        self.runs += 1
        self.last_result = result
        _log_result(result)
        return result

    def _loop(self) -> None:
        wait = self._first_delay_s
        while not self._stop.wait(wait):
            wait = self.every_s if self.run_once() is not None else self._retry_s


def _log_result(result: PruneResult) -> None:
    if not result.days:
        _log.debug("prune: nothing older than %d days", result.retention_days)
        return
    for part in result.partitions:
        _log.info(
            "pruned %s (%s): %d spans, %d 5-minute rollup rows",
            part.partition,
            part.day,
            part.spans,
            part.rollup_rows,
        )
    _log.info("%s", result.summary())


def scheduler_from_settings(
    dsn: str,
    *,
    every_hours: float | None = None,
    disabled: bool = False,
    retention_days: int | None = None,
    rollup_retention_days: int | None = None,
) -> PruneScheduler | None:
    """The scheduler ``tokentrace serve`` should run, or None when pruning is off.

    ``every_hours`` is ``--prune-every`` (None: ``TOKENTRACE_PRUNE_INTERVAL_HOURS``,
    default 24; 0: off); ``disabled`` is ``--no-prune``.
    """
    hours = prune_interval_hours(every_hours)
    if disabled or hours == 0:
        _log.info("scheduled pruning is off")
        return None
    return PruneScheduler(dsn, hours * 3600, retention_days, rollup_retention_days)
