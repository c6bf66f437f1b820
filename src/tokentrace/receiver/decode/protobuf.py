"""Binary OTLP (``application/x-protobuf``, and the gRPC ``Export`` call) → :class:`SpanData`.

Parsed with the ``opentelemetry-proto`` message classes. One string that is not
UTF-8 anywhere in a request makes those refuse the whole request; then
:func:`_salvage` reads it span by span from its framing (:mod:`tokentrace.receiver.wire`),
so only the spans at fault are refused. See :mod:`tokentrace.receiver.decode` for
what is refused whole and what span by span.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError as _ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from tokentrace.receiver import wire
from tokentrace.receiver.decode.results import (
    KIND_NAMES,
    SHOWN_ID_CHARS,
    STATUS_NAMES,
    Decoded,
    DecodeError,
    Rejection,
)
from tokentrace.store.rows import SpanData


def decode_protobuf(body: bytes) -> Decoded:
    """Spans of a binary ``ExportTraceServiceRequest``; :class:`DecodeError` if it is not one."""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except _ProtobufDecodeError as exc:
        return _salvage(body, f"body is not a protobuf ExportTraceServiceRequest ({exc})")
    decoded = Decoded()
    for resource_spans in request.resource_spans:
        _pb_add_resource_spans(decoded.spans, resource_spans)
    return decoded


def _pb_add_resource_spans(out: list[SpanData], resource_spans: ResourceSpans) -> None:
    resource = pb_attributes(resource_spans.resource.attributes)
    for scope_spans in resource_spans.scope_spans:
        _pb_add_spans(out, scope_spans.spans, resource)


def _salvage(body: bytes, refusal: str) -> Decoded:
    """The spans of a request the message classes refused whole, read one by one.

    One string that is not UTF-8 anywhere in a request (proto3 requires UTF-8; not
    every sender checks, and a Collector relays what it gets) makes the whole parse
    fail. When the request's framing is sound, each ``ResourceSpans`` and then each
    ``Span`` of one that fails is parsed on its own: the spans that still fail, or
    whose resource does, are refused with the parser's reason, the others are kept
    (a fault in what is not stored, such as the instrumentation scope, costs
    nothing). A body whose framing is broken is refused whole with ``refusal``.
    """
    decoded = Decoded()
    try:
        for part in wire.messages(body, 1):
            try:
                resource_spans = ResourceSpans.FromString(part)
            except _ProtobufDecodeError:
                _salvage_resource_spans(decoded, part)
            else:
                _pb_add_resource_spans(decoded.spans, resource_spans)
    except wire.WireError:
        raise DecodeError(refusal) from None
    return decoded


def _salvage_resource_spans(decoded: Decoded, part: bytes) -> None:
    resource: dict[str, Any] = {}
    resource_problem = None
    try:
        # Repeated occurrences of a message field merge; so do their concatenated bytes.
        resource = pb_attributes(Resource.FromString(b"".join(wire.messages(part, 1))).attributes)
    except _ProtobufDecodeError as exc:
        resource_problem = f"its resource is not a valid protobuf Resource ({exc})"
    for scope_spans in wire.messages(part, 2):
        for raw in wire.messages(scope_spans, 2):
            try:
                span = Span.FromString(raw)
            except _ProtobufDecodeError as exc:
                problem = f"not a valid protobuf Span ({exc})"
            else:
                if resource_problem is None:
                    _pb_add_spans(decoded.spans, (span,), resource)
                    continue
                problem = resource_problem
            decoded.rejected.append(Rejection(*_raw_ids(raw), problem))


def _raw_ids(raw: bytes) -> tuple[str, str]:
    """Hex trace and span id (fields 1 and 2) of a span that could not be parsed."""
    ids = {1: "", 2: ""}
    try:
        for number, _, start, end in wire.fields(raw):
            if number in ids:
                ids[number] = raw[start:end].hex()[:SHOWN_ID_CHARS]
    except wire.WireError:
        pass
    return ids[1], ids[2]


# Enum value → name, with .get() defaults for values this version does not know.
_KIND_BY_VALUE = dict(enumerate(KIND_NAMES))
_STATUS_BY_VALUE = dict(enumerate(STATUS_NAMES))


def _pb_add_spans(out: list[SpanData], spans: Iterable[Span], resource: dict[str, Any]) -> None:
    # Run once per span: names bound locally and SpanData built positionally, which
    # saves ~0.5 µs of ~10 per span over keywords and helper calls. The arguments
    # follow SpanData's field order (tests/unit/receiver/test_decode.py checks each
    # field by name).
    append, attributes = out.append, pb_attributes
    kind, status_of = _KIND_BY_VALUE.get, _STATUS_BY_VALUE.get
    for span in spans:
        status = span.status
        append(
            SpanData(
                span.trace_id,
                span.span_id,
                span.parent_span_id or None,
                span.name,
                kind(span.kind, "INTERNAL"),
                span.start_time_unix_nano,
                span.end_time_unix_nano,
                attributes(span.attributes),
                resource,
                status_of(status.code, "UNSET"),
                status.message or None,
            )
        )


# The hot loop of decoding: about 0.8 µs per attribute, nearly all of it in creating
# upb's Python objects for each KeyValue and AnyValue (measured in bench/RESULTS.md).
_which = AnyValue.WhichOneof
_SCALARS = frozenset(("string_value", "int_value", "double_value", "bool_value", "bytes_value"))


def pb_attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP ``KeyValue`` list → dict (a later duplicate key wins)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        value = pair.value
        which = _which(value, "value")
        out[pair.key] = getattr(value, which) if which in _SCALARS else pb_value(value)
    return out


def pb_value(value: AnyValue) -> Any:
    """One OTLP ``AnyValue`` as a Python value (bytes stay bytes; unset is None)."""
    which = _which(value, "value")
    if which == "array_value":
        return [pb_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return pb_attributes(value.kvlist_value.values)
    return None if which is None else getattr(value, which)
