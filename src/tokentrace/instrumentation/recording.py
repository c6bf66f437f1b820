"""What a wrapper records with: :class:`RecordingTools` (tracer, GenAI metrics, content switch).

Each instrumentor builds one from the keyword arguments of its
``BaseInstrumentor.instrument()`` (:func:`recording_tools`) and hands it to the
wrappers it installs; every :class:`~tokentrace.instrumentation.call.Call` they
start records through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import get_meter
from opentelemetry.trace import Tracer

from tokentrace._version import __version__
from tokentrace.instrumentation._metrics import GenAIMetrics
from tokentrace.instrumentation.content import capture_content_default

__all__ = ["SCHEMA_URL", "VERSION", "RecordingTools", "recording_tools"]

SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
VERSION = __version__


@dataclass(frozen=True, slots=True)
class RecordingTools:
    """What a wrapper records with: tracer, metrics, and the content switch."""

    tracer: Tracer
    metrics: GenAIMetrics
    capture_content: bool


def recording_tools(scope: str, kwargs: Mapping[str, Any]) -> RecordingTools:
    """Tracer and meter from ``BaseInstrumentor.instrument`` keyword arguments.

    ``tracer_provider`` and ``meter_provider`` (else the global ones), and
    ``capture_content`` (else ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``).
    """
    tracer = trace.get_tracer(
        scope, VERSION, tracer_provider=kwargs.get("tracer_provider"), schema_url=SCHEMA_URL
    )
    meter = get_meter(
        scope, VERSION, meter_provider=kwargs.get("meter_provider"), schema_url=SCHEMA_URL
    )
    capture = kwargs.get("capture_content")
    return RecordingTools(
        tracer=tracer,
        metrics=GenAIMetrics(meter),
        capture_content=capture_content_default() if capture is None else bool(capture),
    )
