"""SDK ``ReadableSpan`` → :class:`tokentrace.store.rows.SpanData` → row (pure)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from tokentrace import attributes as A
from tokentrace.processor import _DerivingSpan, plain_attributes, underived_attributes
from tokentrace.store.rows import (
    COLUMNS,
    BuiltRow,
    CleanMapping,
    SpanData,
    build_row,
    clean_mapping,
)

_STATUS = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}
_KIND = {kind: kind.name for kind in SpanKind}  # Enum.name is a slow property
_DERIVED_KEYS = frozenset(A.DERIVED_KEYS)
_ATTRIBUTES = COLUMNS.index("attributes")
_FIGURES = slice(COLUMNS.index("inference_ms"), COLUMNS.index("load_ms") + 1)
assert COLUMNS[_FIGURES] == ("inference_ms", "ms_per_token", "prefill_ms_per_token",
                             "decode_ms_per_token", "ttft_ms", "load_ms")


def span_data(span: ReadableSpan, attributes: Mapping[str, Any] | None = None) -> SpanData:
    """The storable facts of an ended SDK span (with ``attributes`` instead of its own)."""
    data = _plain_span_data(span, attributes, with_resource=True)
    return data if data is not None else _span_data(span, attributes)


def _span_data(span: ReadableSpan, attributes: Mapping[str, Any] | None) -> SpanData:
    """:func:`span_data` through the span's public properties: any ``ReadableSpan``."""
    ctx = span.context
    parent = span.parent
    start = span.start_time or 0
    end = span.end_time
    status = span.status
    resource = span.resource
    return SpanData(  # positional: this runs once per span exported
        ctx.trace_id.to_bytes(16, "big") if ctx else b"",
        ctx.span_id.to_bytes(8, "big") if ctx else b"",
        parent.span_id.to_bytes(8, "big") if parent else None,
        span.name,
        _kind_name(span.kind),
        start,
        end if end is not None else start,
        plain_attributes(span._attributes) if attributes is None else attributes,
        plain_attributes(resource.attributes) if resource else {},
        _status_name(status.status_code),
        status.description,
    )


def _plain_span_data(
    span: ReadableSpan, attributes: Mapping[str, Any] | None, *, with_resource: bool
) -> SpanData | None:
    """:func:`_span_data` of a span of ``_PLAIN_SPAN_TYPES``, read from its fields.

    ``None`` for any other span (take :func:`_span_data`). Without ``with_resource``
    the resource is left out (empty): for a caller that cleaned it once already.
    """
    if type(span) not in _PLAIN_SPAN_TYPES or not _SDK_LAYOUT:
        return None
    state = span.__dict__
    try:
        ctx, parent, status = state["_context"], state["_parent"], state["_status"]
        start, end = state["_start_time"] or 0, state["_end_time"]
        name, kind, resource = state["_name"], state["_kind"], state["_resource"]
    except KeyError:  # not the SDK's layout after all: its properties are the contract
        return None
    if type(ctx) is not SpanContext or type(status) is not Status:
        return None
    if parent is not None and type(parent) is not SpanContext:
        return None
    return SpanData(  # positional: this runs once per span exported
        ctx[0].to_bytes(16, "big"),  # trace_id, span_id: SpanContext is a tuple
        ctx[1].to_bytes(8, "big"),
        None if parent is None else parent[1].to_bytes(8, "big"),
        name,
        _kind_name(kind),
        start,
        end if end is not None else start,
        plain_attributes(span._attributes) if attributes is None else attributes,
        plain_attributes(resource.attributes) if with_resource and resource else _NO_RESOURCE_ATTRS,
        _status_name(status._status_code),
        status._description,
    )


# A span's properties (``span.context``, ``ctx.trace_id``, ``status.status_code``, …)
# each cost a Python call that just returns a field, some fifteen a span. For the
# span types the SDK and the processor hand over (``ReadableSpan``, and the
# processor's copy, which overrides ``_attributes`` only and is read through it as
# before), the fields are read directly: from the instance ``__dict__`` that
# ``ReadableSpan.__init__`` fills, from ``SpanContext``'s tuple and from ``Status``'s
# two fields. The layout is checked once here; if an SDK release changes it, every
# span takes the properties.
_PLAIN_SPAN_TYPES = frozenset((ReadableSpan, _DerivingSpan))


def _sdk_layout() -> bool:
    ctx = SpanContext(3, 5, False)
    status = Status(StatusCode.ERROR, "x")
    span = ReadableSpan("n", ctx)
    return (
        (ctx[0], ctx[1]) == (ctx.trace_id, ctx.span_id)
        and vars(status) == {"_status_code": status.status_code, "_description": status.description}
        and vars(span).get("_context") is span.context
    )


_SDK_LAYOUT = _sdk_layout()
_NO_RESOURCE_ATTRS: Mapping[str, Any] = MappingProxyType({})


# An enum member's ``name`` is a slow property and hashing one (for a dict lookup)
# calls ``Enum.__hash__`` in Python; its ``_name_`` is a plain attribute. Anything
# that is not a member of the enum takes the original lookup.


def _kind_name(kind: SpanKind) -> str:
    if type(kind) is SpanKind:
        name: str = kind._name_
        return name
    return _KIND.get(kind) or kind.name


def _status_name(code: StatusCode) -> str:
    if type(code) is StatusCode:
        name: str = code._name_
        return name
    return _STATUS.get(code, "UNSET")


def _key(span: ReadableSpan) -> tuple[int, int, int]:
    state = span.__dict__ if type(span) in _PLAIN_SPAN_TYPES and _SDK_LAYOUT else _NO_STATE
    ctx = state.get("_context", _UNREAD)
    start = state.get("_start_time", _UNREAD)
    if ctx is _UNREAD or start is _UNREAD:  # not a plain span: see _PLAIN_SPAN_TYPES
        ctx, start = span.context, span.start_time
    # Microseconds, as stored: the same order as the writer's (start_time, ids).
    start_us = (start or 0) // 1000
    if type(ctx) is SpanContext and _SDK_LAYOUT:
        return (start_us, ctx[0], ctx[1])
    return (start_us, ctx.trace_id, ctx.span_id) if ctx else (start_us, 0, 0)


_NO_STATE: dict[str, Any] = {}
_UNREAD = object()


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

    __slots__ = ("_last", "_last_clean", "_max_value_chars", "_seen")

    def __init__(self, max_value_chars: int) -> None:
        self._max_value_chars = max_value_chars
        self._seen: dict[int, CleanMapping] = {}
        # The exporter asks twice per span, and a batch's spans mostly share one
        # resource: an identity check answers most calls without hashing.
        self._last: object = _NO_RESOURCE
        self._last_clean = clean_mapping({})

    def get(self, resource: Resource | None) -> CleanMapping:
        if resource is self._last:
            return self._last_clean
        key = id(resource)
        clean = self._seen.get(key)
        if clean is None:
            attrs = plain_attributes(resource.attributes) if resource else {}
            clean = self._seen[key] = clean_mapping(attrs, self._max_value_chars)
        self._last, self._last_clean = resource, clean
        return clean


_NO_RESOURCE = object()  # matches no resource, None included


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
            row = build_row(_row_data(span, attrs), max_value_chars, resource=resource)
            if _unaltered(row):
                return row
    return build_row(_row_data(span, None), max_value_chars, resource=resource)


def _row_data(span: ReadableSpan, attributes: Mapping[str, Any] | None) -> SpanData:
    """``span_data(span, attributes)``, but the resource may be left out (empty).

    For ``build_row(..., resource=...)``, which never reads ``SpanData.resource``:
    the span's resource is cleaned once per batch (``ResourceCache``) instead.
    """
    data = _plain_span_data(span, attributes, with_resource=False)
    return data if data is not None else _span_data(span, attributes)


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
