"""SDK ``ReadableSpan`` → :class:`tokentrace.store.rows.SpanData` → row (pure): one reader, one build."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from tokentrace.processor import DerivingSpan, plain_attributes, underived_attributes
from tokentrace.store.rows import BuiltRow, CleanMapping, SpanData, build_row, clean_mapping

_STATUS = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}
_KIND = {kind: kind.name for kind in SpanKind}  # Enum.name is a slow property


def span_data(
    span: ReadableSpan, attributes: Mapping[str, Any] | None = None, *, with_resource: bool = True
) -> SpanData:
    """The storable facts of an ended SDK span (with ``attributes`` instead of its own).

    The one reader of a span. Without ``with_resource`` the resource is left out
    (empty): for ``build_row(..., resource=...)``, which never reads it, given a
    resource cleaned once per batch (:class:`ResourceCache`).
    """
    state = _sdk_state(span)
    if state is not None:
        try:
            ctx, parent, status = state["_context"], state["_parent"], state["_status"]
            start, end = state["_start_time"] or 0, state["_end_time"]
            name, kind, resource = state["_name"], state["_kind"], state["_resource"]
        except KeyError:  # not the SDK's layout after all: its properties are the contract
            state = None
        else:
            if (
                type(ctx) is not SpanContext
                or type(status) is not Status
                or (parent is not None and type(parent) is not SpanContext)
            ):
                state = None
    if state is not None:
        trace_id = ctx[0].to_bytes(16, "big")  # trace_id, span_id: SpanContext is a tuple
        span_id = ctx[1].to_bytes(8, "big")
        parent_id = None if parent is None else parent[1].to_bytes(8, "big")
        status_code, description = status._status_code, status._description
    else:
        ctx, parent, status = span.context, span.parent, span.status
        start, end = span.start_time or 0, span.end_time
        name, kind, resource = span.name, span.kind, span.resource
        trace_id = ctx.trace_id.to_bytes(16, "big") if ctx else b""
        span_id = ctx.span_id.to_bytes(8, "big") if ctx else b""
        parent_id = parent.span_id.to_bytes(8, "big") if parent else None
        status_code, description = status.status_code, status.description
    return SpanData(  # positional: this runs once per span exported
        trace_id,
        span_id,
        parent_id,
        name,
        _kind_name(kind),
        start,
        end if end is not None else start,
        plain_attributes(span._attributes) if attributes is None else attributes,
        plain_attributes(resource.attributes) if with_resource and resource else _NO_RESOURCE_ATTRS,
        _status_name(status_code),
        description,
    )


def _sdk_state(span: ReadableSpan) -> dict[str, Any] | None:
    """The fields of ``span`` to read directly, or None: read its properties instead.

    The one shortcut of :func:`span_data` and :func:`in_key_order`. A span's
    properties (``span.context``, ``ctx.trace_id``, ``status.status_code``, …) each
    cost a Python call that just returns a field, some fifteen a span. For the span
    types the SDK and the processor hand over (``ReadableSpan``, and the
    processor's copy, which overrides ``_attributes`` only and is read through it as
    before), the fields are read from the instance ``__dict__`` that
    ``ReadableSpan.__init__`` fills, from ``SpanContext``'s tuple and from
    ``Status``'s two fields. The layout is checked once here; if an SDK release
    changes it, every span takes the properties.
    """
    if type(span) in _PLAIN_SPAN_TYPES and _SDK_LAYOUT:
        return span.__dict__
    return None


_PLAIN_SPAN_TYPES = frozenset((ReadableSpan, DerivingSpan))


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
    state = _sdk_state(span) or _NO_STATE
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
    """``build_row(span_data(span))``, built once, deriving the processor's figures once.

    A span forwarded by :class:`~tokentrace.processor.TokenEfficiencySpanProcessor`
    has its figures derived when its attributes are first read. ``build_row``
    derives the same figures from the same functions, so it is given the attributes
    the span ended with, and the processor's only where they could make a different
    row (see ``build_row``'s ``derived``).
    """
    resource = resources.get(span.resource)
    source = underived_attributes(span)
    if source is None:
        return build_row(span_data(span, with_resource=False), max_value_chars, resource=resource)
    data = span_data(span, plain_attributes(source), with_resource=False)
    return build_row(
        data, max_value_chars, resource=resource, derived=lambda: plain_attributes(span.attributes)
    )
