"""SDK ``ReadableSpan`` → :class:`tokentrace.store.rows.SpanData` (pure)."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from tokentrace.store.rows import SpanData

_STATUS = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}


def span_data(span: ReadableSpan) -> SpanData:
    """The storable facts of an ended SDK span."""
    ctx = span.context
    parent = span.parent
    start = span.start_time or 0
    return SpanData(
        trace_id=ctx.trace_id.to_bytes(16, "big") if ctx else b"",
        span_id=ctx.span_id.to_bytes(8, "big") if ctx else b"",
        parent_span_id=parent.span_id.to_bytes(8, "big") if parent else None,
        name=span.name,
        kind=span.kind.name,
        start_ns=start,
        end_ns=span.end_time if span.end_time is not None else start,
        attributes=span.attributes or {},
        resource=span.resource.attributes if span.resource else {},
        status=_STATUS.get(span.status.status_code, "UNSET"),
        status_message=span.status.description,
    )
