"""Retention: raw spans by whole day partitions, rollups kept longer, on a schedule.

Raw spans live in one partition per UTC day (``tokentrace.spans_YYYYMMDD``).
Pruning removes every partition that lies wholly before ``now − retention``: no
row-by-row ``DELETE``, no WAL per row, no ``VACUUM``, no table bloat, and no
``count(*)`` of the day either (the spans reported come from the day's 5-minute
rollups, deleted with it; ``exact_counts=True`` counts instead).

It runs in two phases, each its own transaction:

1. ``tokentrace.prune(…, defer_release => true)`` *detaches* the expired partitions
   from ``tokentrace.spans`` and moves them to the schema ``tokentrace_expired``
   (with the day's 5-minute rollups deleted): catalog work of a few milliseconds,
   after which the spans are gone from the table and from every report, and the
   lock it took on ``tokentrace.spans`` (which blocks writers) is released.
2. ``tokentrace_expired.release_pruned()`` drops the detached tables: the
   filesystem hands the day's files back (the slow part, growing with the day's
   size) while only those tables are locked — writers and reports carry on.

A crash between the two leaves the detached tables in ``tokentrace_expired``
(listed by ``tokentrace.pruned_pending``); the next prune releases them.
``SELECT * FROM tokentrace.prune()`` in SQL, without ``defer_release``, still drops
in one transaction (holding the lock on spans until the files are freed).

The rollups the reports read (``tokentrace.span_rollups``) are kept longer, so 60-day
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
per removed partition, a summary and what the release freed) and a failed run at
WARNING (a release that failed after the spans were removed too: it is retried by
the next run); it retries a
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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from tokentrace import config
from tokentrace.config import ConfigError, env_int
from tokentrace.store.connection import connect
from tokentrace.store.errors import describe

_log = logging.getLogger(__name__)

DEFAULT_ROLLUP_RETENTION_DAYS = 400
DEFAULT_PRUNE_INTERVAL_HOURS = 24.0
_PRUNE_SQL = (
    "SELECT partition_name, day, spans, rollup_rows, kind FROM tokentrace.prune(%s, %s, %s, %s) "
    "ORDER BY kind, day, partition_name NULLS LAST"
)
_RELEASE_SQL = "SELECT table_name, day, total_bytes FROM tokentrace_expired.release_pruned()"


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
class ReleasedTable:
    """A detached day partition dropped by ``tokentrace_expired.release_pruned()``."""

    table: str
    day: dt.date | None
    bytes: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    """The outcome of one :func:`prune`.

    ``removed_ms`` is the first phase (until the spans were gone and the lock on
    ``tokentrace.spans`` released), ``release_ms`` the second (until the files were
    freed); ``release_error`` says why the second failed, if it did (the detached
    tables wait in ``tokentrace_expired`` for the next prune).
    """

    retention_days: int
    rollup_retention_days: int
    days: tuple[PrunedDay, ...]
    exact_counts: bool = False
    released: tuple[ReleasedTable, ...] = ()
    removed_ms: float = 0.0
    release_ms: float | None = None
    release_error: str | None = None

    @property
    def bytes_released(self) -> int:
        return sum(t.bytes for t in self.released)

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
        text = (
            f"{text}; {self.rollup_rows_removed:,} rollup row(s) removed "
            f"({expired:,} older than {self.rollup_retention_days} days)"
        )
        if self.released:
            text += f"; {len(self.released)} table(s) released, {_mb(self.bytes_released)} freed"
        if self.release_error is not None:
            text += "; releasing the files FAILED (the next prune retries)"
        return text

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
            "released": [
                {
                    "table": t.table,
                    "day": t.day.isoformat() if t.day else None,
                    "bytes": t.bytes,
                }
                for t in self.released
            ],
            "bytes_released": self.bytes_released,
            "removed_ms": round(self.removed_ms, 3),
            "release_ms": None if self.release_ms is None else round(self.release_ms, 3),
            "release_error": self.release_error,
        }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


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
    release: bool = True,
) -> PruneResult:
    """Remove expired raw day partitions and expired rollups now; say what went.

    Two transactions: the expired partitions are detached (their spans are gone
    from ``tokentrace.spans`` and every report when it commits, and the lock on
    spans is released), then :func:`release_pruned` drops them, freeing their files
    without blocking writers. ``release=False`` leaves that to a later
    :func:`release_pruned` (or the next prune). A release that fails does not undo
    the first phase: ``release_error`` says why, and the next prune retries it.

    The spans of a removed day are reported from its 5-minute rollups, which the
    prune deletes anyway (spans with a model; exact whenever spans were written
    through ``tokentrace.spans``). ``exact_counts=True`` counts each partition with
    ``count(*)`` first instead: every span stored, at the price of reading the whole
    day while holding the lock on spans.
    """
    days = config.retention_days(retention_days)
    rollup_days = resolve_rollup_retention(rollup_retention_days, days)
    released: tuple[ReleasedTable, ...] = ()
    release_ms: float | None = None
    error: str | None = None
    with connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        rows = conn.execute(
            _PRUNE_SQL,
            (dt.timedelta(days=days), dt.timedelta(days=rollup_days), exact_counts, True),
        ).fetchall()
        removed_ms = (time.perf_counter() - started) * 1000
        if release:
            started = time.perf_counter()
            try:
                released = _release(conn)
            except psycopg.Error as exc:
                error = describe(exc)
                _log.warning("releasing pruned partitions failed (the next prune retries): %s", error)
            release_ms = (time.perf_counter() - started) * 1000
    return PruneResult(
        retention_days=days,
        rollup_retention_days=rollup_days,
        days=tuple(_pruned_day(row) for row in rows),
        exact_counts=exact_counts,
        released=released,
        removed_ms=removed_ms,
        release_ms=release_ms,
        release_error=error,
    )


def release_pruned(dsn: str) -> tuple[ReleasedTable, ...]:
    """Drop the day partitions a prune detached (``tokentrace_expired.release_pruned()``).

    Frees their files; locks only those detached tables, never ``tokentrace.spans``.
    """
    with connect(dsn, autocommit=True) as conn:
        return _release(conn)


def _release(conn: psycopg.Connection[Any]) -> tuple[ReleasedTable, ...]:
    rows = conn.execute(_RELEASE_SQL).fetchall()
    return tuple(ReleasedTable(table=str(n), day=d, bytes=int(b or 0)) for n, d, b in rows)


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
            _log.warning("scheduled prune failed: %s", describe(exc))
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
    if not result.days and not result.released:
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
    if result.released:
        _log.info(
            "spans gone in %.1f ms; %s freed in %.1f ms more",
            result.removed_ms,
            _mb(result.bytes_released),
            result.release_ms or 0.0,
        )


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
