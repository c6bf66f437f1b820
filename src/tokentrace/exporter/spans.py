"""SDK ``ReadableSpan`` → :class:`tokentrace.store.rows.SpanData` → row (pure)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from tokentrace import attributes as A
from tokentrace.processor import plain_attributes, underived_attributes
from tokentrace.store.rows import COLUMNS, BuiltRow, CleanMapping, SpanData, build_row, clean_mapping

_STATUS = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}
_KIND = {kind: kind.name for kind in SpanKind}  # Enum.name is a slow property
_DERIVED_KEYS = frozenset(A.DERIVED_KEYS)
_ATTRIBUTES = COLUMNS.index("attributes")
_FIGURES = slice(COLUMNS.index("inference_ms"), COLUMNS.index("load_ms") + 1)
assert COLUMNS[_FIGURES] == ("inference_ms", "ms_per_token", "prefill_ms_per_token",
                             "decode_ms_per_token", "ttft_ms", "load_ms")


def span_data(span: ReadableSpan, attributes: Mapping[str, Any] | None = None) -> SpanData:
    """The storable facts of an ended SDK span (with ``attributes`` instead of its own)."""
    ctx = span.context
    parent = span.parent
    start = span.start_time or 0
    end = span.end_time
    status = span.status
    kind = span.kind
    resource = span.resource
    return SpanData(  # positional: this runs once per span exported
        ctx.trace_id.to_bytes(16, "big") if ctx else b"",
        ctx.span_id.to_bytes(8, "big") if ctx else b"",
        parent.span_id.to_bytes(8, "big") if parent else None,
        span.name,
        _KIND.get(kind) or kind.name,
        start,
        end if end is not None else start,
        plain_attributes(span._attributes) if attributes is None else attributes,
        plain_attributes(resource.attributes) if resource else {},
        _STATUS.get(status.status_code, "UNSET"),
        status.description,
    )


def _key(span: ReadableSpan) -> tuple[int, int, int]:
    ctx = span.context
    # Microseconds, as stored: the same order as the writer's (start_time, ids).
    start_us = (span.start_time or 0) // 1000
    return (start_us, ctx.trace_id, ctx.span_id) if ctx else (start_us, 0, 0)


def in_key_order(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """``spans`` in the order their rows are written (see SpanWriter.write_ordered)."""
    return sorted(spans, key=_key)


_NS_PER_DAY = 86_400 * 10**9
_EPOCH_DAY = dt.date(1970, 1, 1)


def span_days(spans: Sequence[ReadableSpan]) -> set[dt.date]:
    """The UTC days the spans start on: the partitions their rows need."""
    days = {(span.start_time or 0) // _NS_PER_DAY for span in spans}
    return {_EPOCH_DAY + dt.timedelta(days=day) for day in days if 0 <= day <= _MAX_DAY}


_MAX_DAY = (dt.date(9999, 12, 31) - _EPOCH_DAY).days


class ResourceCache:
    """Cleans each distinct ``Resource`` of a batch once; its spans share the result.

    Keyed by object identity, so use one cache per batch (while the spans, and so
    their resources, are alive).
    """

    __slots__ = ("_max_value_chars", "_seen")

    def __init__(self, max_value_chars: int) -> None:
        self._max_value_chars = max_value_chars
        self._seen: dict[int, CleanMapping] = {}

    def get(self, resource: Resource | None) -> CleanMapping:
        key = id(resource)
        clean = self._seen.get(key)
        if clean is None:
            attrs = plain_attributes(resource.attributes) if resource else {}
            clean = self._seen[key] = clean_mapping(attrs, self._max_value_chars)
        return clean


def span_row(span: ReadableSpan, max_value_chars: int, resources: ResourceCache) -> BuiltRow:
    """``build_row(span_data(span))``, without deriving the processor's figures twice.

    A span forwarded by :class:`~tokentrace.processor.TokenEfficiencySpanProcessor`
    has its figures derived when its attributes are first read. ``build_row``
    derives the same figures from the same functions, so the row is built from the
    attributes the span ended with: the same row, at half the cost. It could differ
    only where the processor's figures change what ``build_row`` sees — an attribute
    with a derived figure's name, an attribute the sanitizer alters, a figure that
    is not finite — and then the row is built from the processor's attributes.
    """
    resource = resources.get(span.resource)
    source = underived_attributes(span)
    if source is not None:
        attrs = plain_attributes(source)
        if _DERIVED_KEYS.isdisjoint(attrs):
            row = build_row(span_data(span, attrs), max_value_chars, resource=resource)
            if _unaltered(row):
                return row
    return build_row(span_data(span), max_value_chars, resource=resource)


def _unaltered(row: BuiltRow) -> bool:
    """No attribute needed sanitizing and every derived figure is finite."""
    values = row.values
    if A.TT_SANITIZED in values[_ATTRIBUTES]:
        return False
    # The derived figures' columns hold exactly the values of their attributes.
    for value in values[_FIGURES]:
        if type(value) is float and not math.isfinite(value):
            return False
    return True
