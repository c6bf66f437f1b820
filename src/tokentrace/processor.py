"""``TokenEfficiencySpanProcessor``: put ms/token on every GenAI span, for any exporter.

The SDK hands processors an ended, read-only span, so the processor wraps the
processor that does the exporting (usually a ``BatchSpanProcessor``) and forwards a
copy of each GenAI span that carries the derived ``tokentrace.*`` attributes (see
:mod:`tokentrace.efficiency`). Because the figures are on the span itself, an OTLP
exporter to any other backend receives them too::

    provider.add_span_processor(
        TokenEfficiencySpanProcessor(BatchSpanProcessor(OTLPSpanExporter()))
    )

Spans that are not GenAI spans, and unsampled spans, are forwarded untouched.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.util.types import AttributeValue

from tokentrace.dialects import normalize
from tokentrace.efficiency import derive


def _with_attributes(span: ReadableSpan, extra: dict[str, AttributeValue]) -> ReadableSpan:
    # A shallow copy is an order of magnitude cheaper than ReadableSpan.__init__ and
    # keeps every field (events, links, dropped counts) exactly as the SDK set it.
    copy = ReadableSpan.__new__(type(span))
    copy.__dict__.update(span.__dict__)
    merged: dict[str, AttributeValue] = dict(span.attributes or {})
    merged.update(extra)
    copy._attributes = merged
    return copy


class TokenEfficiencySpanProcessor(SpanProcessor):
    """Derives the efficiency figures at span end and forwards to ``delegate``."""

    def __init__(self, delegate: SpanProcessor) -> None:
        self._delegate = delegate

    @property
    def delegate(self) -> SpanProcessor:
        return self._delegate

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._delegate.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.context
        if ctx is None or not ctx.trace_flags.sampled or not span.attributes:
            self._delegate.on_end(span)
            return
        facts = normalize(span.attributes)
        if not facts.is_genai:
            self._delegate.on_end(span)
            return
        start, end = span.start_time, span.end_time
        duration_ms = (end - start) / 1e6 if start is not None and end is not None else None
        extra = derive(facts, span.attributes, duration_ms).as_attributes()
        self._delegate.on_end(_with_attributes(span, extra) if extra else span)

    def shutdown(self) -> None:
        self._delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._delegate.force_flush(timeout_millis)
