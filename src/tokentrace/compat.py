"""A drop-in for the original system's telemetry object.

Code written against the original in-house telemetry awaited seven methods on one
object. Change the import and keep the calls::

    from tokentrace.compat import Telemetry

    telemetry = Telemetry()                       # dsn=None: TOKENTRACE_DSN or embedded
    start = telemetry.start_timer()               # no await, as the original's callers wrote it
    model = load_model()
    latency = telemetry.measure_latency(start)    # seconds, a number
    await telemetry.log_load_latency("llama3.2", latency)
    await telemetry.log_thought_latency("llama3.2", 2.4, tokens_generated=180, prompt_tokens=42)

    await telemetry.get_aggregated_efficiency(hours=24, component="llama3.2")
    await telemetry.get_60day_statistics()         # {"status": "success", "statistics": {...}}
    await telemetry.get_telemetry_footprint()      # {"status": "success", "footprint": {...}}

``start_timer()`` and ``measure_latency(start)`` answer at once with a
:class:`Seconds`: a ``float`` (arithmetic, comparisons, formatting, ``json.dumps``
and ``isinstance(x, float)`` all behave as for the number) that can also be
awaited, giving the same number as a plain ``float`` — so
``start = await telemetry.start_timer()`` works too. Times come from
:func:`time.perf_counter`: only differences between them mean anything. The
other five methods are coroutines, as the original's were.

The reports have the original's shapes, key for key and type for type, with
tokentrace's richer keys beside them (``docs/reports.md`` lists every key):
``get_60day_statistics()`` gives ``statistics.overall`` (``total_measurements``,
``unique_models``, ``oldest_record``, ``newest_record``, …) and
``statistics.model_trends`` (``component``, ``avg_efficiency``,
``measurement_count``, ``total_tokens_processed``, …); ``get_telemetry_footprint()``
gives ``footprint.table_sizes`` (``tablename``, ``total_size``, ``size_bytes``),
``row_counts`` (table → rows), ``oldest_telemetry_record`` and ``monitored_at``.

Logging calls record OpenTelemetry spans through the normal pipeline. The report
calls flush pending spans first, so what was just logged is counted, and answer
``{"status": "error", "message": ...}`` instead of raising when the database fails.
They read on a connection the object keeps between calls (closed with the object;
see :mod:`tokentrace.store.pool`), so a router polling ``get_aggregated_efficiency``
does not pay for a new database session each time.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any

import psycopg

from tokentrace import api, reports
from tokentrace.pipeline import configure, flush
from tokentrace.store.connection import resolve_dsn
from tokentrace.store.errors import describe


class Seconds(float):
    """A number of seconds that can also be awaited (to itself, as a plain ``float``).

    The original's callers use ``start_timer()`` and ``measure_latency()`` without
    ``await``; code written for tokentrace's earlier coroutines awaits them. Both
    get the number. Arithmetic on it gives plain floats; it pickles (and copies) as
    a plain float, so a pickle of it loads where tokentrace is not installed.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, float]:
        return float(self)
        yield  # pragma: no cover - never reached; makes this a generator (an awaitable)

    def __reduce__(self) -> tuple[type[float], tuple[float]]:
        return (float, (float(self),))


class Telemetry:
    """The original telemetry object's seven methods, on tokentrace."""

    def __init__(self, dsn: str | None = None) -> None:
        self._dsn = resolve_dsn(dsn)
        configure(self._dsn)
        self._reports = reports.report_pool(self._dsn)
        weakref.finalize(self, self._reports.close)

    def start_timer(self) -> Seconds:
        """Now, on :func:`time.perf_counter`'s clock (awaiting it gives the same)."""
        return Seconds(time.perf_counter())

    def measure_latency(self, start: float) -> Seconds:
        """Seconds since ``start`` (a value from :meth:`start_timer`; awaiting gives the same)."""
        return Seconds(time.perf_counter() - start)

    async def log_load_latency(
        self, model_name: str, load_time_seconds: float, success: bool = True
    ) -> None:
        api.log_load_latency(model_name, load_time_seconds, success)

    async def log_thought_latency(
        self,
        model_name: str,
        inference_time_seconds: float,
        tokens_generated: int,
        prompt_tokens: int = 0,
    ) -> None:
        api.log_thought_latency(model_name, inference_time_seconds, tokens_generated, prompt_tokens)

    async def get_aggregated_efficiency(
        self, hours: float = 24, component: str | None = None
    ) -> dict[str, Any]:
        def read(conn: psycopg.Connection[Any]) -> dict[str, Any]:
            rows = reports.efficiency(conn, hours, component)
            return {"hours": hours, "component": component, "efficiency": rows}

        return await self._report(read)

    async def get_60day_statistics(self) -> dict[str, Any]:
        return await self._report(lambda conn: {"statistics": reports.sixty_day(conn)})

    async def get_telemetry_footprint(self) -> dict[str, Any]:
        return await self._report(lambda conn: {"footprint": reports.footprint(conn)})

    async def _report(
        self, read: Callable[[psycopg.Connection[Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            flush()
            try:
                return {"status": "success", **self._reports.run(read)}
            except (psycopg.Error, reports.ReportError) as exc:
                return {"status": "error", "message": describe(exc)}

        return await asyncio.to_thread(run)
