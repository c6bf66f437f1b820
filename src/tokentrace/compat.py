"""A drop-in for the original system's telemetry object.

Code written against the original in-house telemetry awaited seven methods on one
object. Change the import and keep the calls::

    from tokentrace.compat import Telemetry

    telemetry = Telemetry()                       # dsn=None: TOKENTRACE_DSN or embedded
    start = await telemetry.start_timer()
    model = load_model()
    await telemetry.log_load_latency("llama3.2", await telemetry.measure_latency(start))
    await telemetry.log_thought_latency("llama3.2", 2.4, tokens_generated=180, prompt_tokens=42)

    await telemetry.get_aggregated_efficiency(hours=24, component="llama3.2")
    await telemetry.get_60day_statistics()         # {"status": "success", "statistics": {...}}
    await telemetry.get_telemetry_footprint()      # {"status": "success", "footprint": {...}}

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
from collections.abc import Callable
from typing import Any

import psycopg

from tokentrace import api, reports
from tokentrace.config import redact
from tokentrace.pipeline import configure, flush
from tokentrace.store.connection import resolve_dsn


class Telemetry:
    """The original telemetry object's seven awaitable methods, on tokentrace."""

    def __init__(self, dsn: str | None = None) -> None:
        self._dsn = resolve_dsn(dsn)
        configure(self._dsn)
        self._reports = reports.report_pool(self._dsn)
        weakref.finalize(self, self._reports.close)

    async def start_timer(self) -> float:
        return time.perf_counter()

    async def measure_latency(self, start: float) -> float:
        """Seconds since ``start`` (a value from :meth:`start_timer`)."""
        return time.perf_counter() - start

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
                return {"status": "error", "message": redact(str(exc)).strip()}

        return await asyncio.to_thread(run)
