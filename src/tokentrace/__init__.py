"""tokentrace: token-aware telemetry for LLM model serving.

Every model load and every inference becomes an OpenTelemetry span with token
counts; a span processor derives latency per output token (ms/token); spans are
stored in PostgreSQL, where SQL views report token-weighted efficiency per model,
60-day trends and the database's footprint.

Quick use::

    import tokentrace
    tokentrace.configure()                     # PostgreSQL: TOKENTRACE_DSN or embedded

    with tokentrace.inference("llama3.2", provider="ollama") as call:
        ...
        call.set_tokens(input=42, output=128)

See :mod:`tokentrace.api` for the manual API, :mod:`tokentrace.processor` for the
span processor, :mod:`tokentrace.exporter` for the PostgreSQL exporter.
"""

from __future__ import annotations

from tokentrace._version import __version__
from tokentrace.api import (
    Inference,
    ModelLoad,
    inference,
    log_load_latency,
    log_thought_latency,
    model_load,
)
from tokentrace.instrumentation import instrument
from tokentrace.pipeline import configure, flush
from tokentrace.processor import TokenEfficiencySpanProcessor


__all__ = [
    "Inference",
    "ModelLoad",
    "TokenEfficiencySpanProcessor",
    "__version__",
    "configure",
    "flush",
    "inference",
    "instrument",
    "log_load_latency",
    "log_thought_latency",
    "model_load",
]
