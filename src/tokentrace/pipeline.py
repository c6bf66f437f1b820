"""Wiring the default pipeline: processor → batch processor → PostgreSQL exporter.

:func:`configure` is what ``tokentrace.configure()`` and ``tokentrace.instrument()``
call. ``OTEL_BSP_*`` variables, when set, win over the defaults below.

The batch processor gets larger defaults than the SDK's (queue 2,048, batch 512,
delay 5 s). The queue is what absorbs a burst the exporter cannot keep up with, and
262,144 spans hold a 60 s burst at 15,000/s even if the exporter stored only ~10,600/s.
In ``bench/bench_export.py`` it stored a 60 s burst of 15,000 spans/s with nothing
dropped and at most ~10,000 spans ever queued (the SDK's defaults dropped 1.6 % of
it). The queue costs memory only as it fills: a queued GenAI span takes about 0.9 KB
(1.4 KB once its figures are derived), so a full queue is ~220–350 MiB; lower
``TOKENTRACE_BSP_MAX_QUEUE_SIZE`` where memory matters more than bursts. Batches of
8,192 spans are one COPY and one transaction each. See ``bench/RESULTS.md`` for the
figures and the machine they come from.
"""

from __future__ import annotations

import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tokentrace.config import env_int
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.processor import TokenEfficiencySpanProcessor

DEFAULT_MAX_QUEUE_SIZE = 262_144
DEFAULT_BATCH_SIZE = 8_192
DEFAULT_SCHEDULE_DELAY_MS = 1_000

_lock = threading.Lock()
_configured: TracerProvider | None = None


def _bsp_setting(otel_name: str, ours: str, default: int) -> int:
    if os.environ.get(otel_name, "").strip():
        return env_int(otel_name, default, minimum=1)
    return env_int(ours, default, minimum=1)


def default_span_processor(dsn: str | None = None) -> TokenEfficiencySpanProcessor:
    """The processor chain tokentrace installs, exporting to PostgreSQL."""
    queue_size = _bsp_setting("OTEL_BSP_MAX_QUEUE_SIZE", "TOKENTRACE_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE)
    batch = min(
        _bsp_setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "TOKENTRACE_BSP_BATCH_SIZE", DEFAULT_BATCH_SIZE),
        queue_size,
    )
    delay = _bsp_setting("OTEL_BSP_SCHEDULE_DELAY", "TOKENTRACE_BSP_DELAY_MS", DEFAULT_SCHEDULE_DELAY_MS)
    batcher = BatchSpanProcessor(
        PostgresSpanExporter(dsn),
        max_queue_size=queue_size,
        max_export_batch_size=batch,
        schedule_delay_millis=delay,
    )
    return TokenEfficiencySpanProcessor(batcher)


def configure(dsn: str | None = None, *, service_name: str | None = None) -> TracerProvider:
    """Send spans to PostgreSQL with ms/token derived; safe to call more than once.

    If the application already set an SDK ``TracerProvider``, tokentrace's processor
    is added to it; otherwise a new provider is created and made global.
    """
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            provider = current
        else:
            attrs = {"service.name": service_name} if service_name else {}
            provider = TracerProvider(resource=Resource.create(attrs))
            trace.set_tracer_provider(provider)
        provider.add_span_processor(default_span_processor(dsn))
        _configured = provider
        return provider


def configured_provider() -> TracerProvider | None:
    return _configured


def flush(timeout_millis: int = 30_000) -> bool:
    """Export every span ended so far (``True`` when nothing is left pending)."""
    provider = _configured or trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        return provider.force_flush(timeout_millis)
    return True
