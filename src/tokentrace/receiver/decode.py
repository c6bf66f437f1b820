"""OTLP trace export requests (protobuf or JSON) → :class:`SpanData`. Pure, no I/O.

Both OTLP encodings carry the same ``ExportTraceServiceRequest``. This module turns
either into the :class:`~tokentrace.store.rows.SpanData` the store builds rows from,
so a span that comes over OTLP is normalized and derived exactly like one exported
in process.

Binary protobuf (``application/x-protobuf``, and the gRPC ``Export`` call) is parsed
with the ``opentelemetry-proto`` message classes. OTLP/JSON (``application/json``)
is *not* plain proto3 JSON, so it is walked by hand rather than with
``google.protobuf.json_format``:

* ``traceId``, ``spanId`` and ``parentSpanId`` are hex strings (any case), not
  base64 — ``json_format.Parse`` would silently turn them into 24 garbage bytes;
* 64-bit integers (``startTimeUnixNano``, ``intValue``) are decimal strings, though
  plain JSON numbers are accepted too;
* enums (``kind``, ``status.code``) are integers (the enum names are accepted too);
* keys are lowerCamelCase; unknown keys are ignored.

Two kinds of failure are kept apart. A body that is not an export request at all
(not protobuf, not JSON, wrong structure above the span level) raises
:class:`DecodeError`: the whole request is refused. A span that is malformed on
its own (an id that is not hex, a timestamp that is not a number, an attribute
value of the wrong type; in protobuf, a string that is not UTF-8) becomes a
:class:`Rejection` with a reason and the other spans of the request go on. Ids of
the wrong *length* are left for :func:`~tokentrace.store.rows.build_row` to refuse,
so both encodings give the same reason for them.

Span kinds and status codes become the names the in-process exporter uses
(``CLIENT``, ``ERROR``, …); ``SPAN_KIND_UNSPECIFIED`` is read as ``INTERNAL``, as
the OTLP specification allows. Events, links and the instrumentation scope are not
stored (the in-process exporter does not store them either).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError as _ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from tokentrace.receiver import wire
from tokentrace.store.rows import SpanData

# Indexed by the OTLP enum value; SPAN_KIND_UNSPECIFIED (0) reads as INTERNAL.
KIND_NAMES: tuple[str, ...] = ("INTERNAL", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_NAMES: tuple[str, ...] = ("UNSET", "OK", "ERROR")
_KIND_ENUM = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_ENUM = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1
# Deeper attribute values than this are refused: they only serve to exhaust the stack.
MAX_VALUE_DEPTH = 64
_HEX = re.compile(r"[0-9a-fA-F]*")
_SHOWN_ID_CHARS = 40


class DecodeError(ValueError):
    """The body is not an OTLP trace export request (the message says why)."""


class _SpanProblem(ValueError):
    """One span cannot be read; the other spans of the request are unaffected."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A span refused, with the ids it was sent with (hex, or as received)."""

    trace_id: str
    span_id: str
    reason: str

    def describe(self) -> str:
        return f"span {self.trace_id or '?'}/{self.span_id or '?'}: {self.reason}"


@dataclass(slots=True)
class Decoded:
    """The spans of one request that could be read, and those that could not."""

    spans: list[SpanData] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.spans) + len(self.rejected)


def kind_name(value: int) -> str:
    """The exporter's name for an OTLP span kind (unknown values read as INTERNAL)."""
    return KIND_NAMES[value] if 0 <= value < len(KIND_NAMES) else "INTERNAL"


def status_name(value: int) -> str:
    """The exporter's name for an OTLP status code (unknown values read as UNSET)."""
    return STATUS_NAMES[value] if 0 <= value < len(STATUS_NAMES) else "UNSET"


# --- protobuf -----------------------------------------------------------------------
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
                ids[number] = raw[start:end].hex()[:_SHOWN_ID_CHARS]
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


# --- JSON ---------------------------------------------------------------------------
def decode_json(body: bytes) -> Decoded:
    """Spans of an OTLP/JSON ``ExportTraceServiceRequest``; :class:`DecodeError` if it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise DecodeError(f"body is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise DecodeError("an OTLP/JSON request must be a JSON object")
    decoded = Decoded()
    for i, resource_spans in enumerate(_json_list(document, "resourceSpans", "request")):
        where = f"resourceSpans[{i}]"
        if not isinstance(resource_spans, dict):
            raise DecodeError(f"{where} must be an object")
        resource = _json_resource(resource_spans.get("resource"), where)
        for j, scope_spans in enumerate(_json_list(resource_spans, "scopeSpans", where)):
            inner = f"{where}.scopeSpans[{j}]"
            if not isinstance(scope_spans, dict):
                raise DecodeError(f"{inner} must be an object")
            for span in _json_list(scope_spans, "spans", inner):
                _json_add_span(decoded, span, resource)
    return decoded


def _json_list(parent: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError(f"{where}.{key} must be an array")
    return value


def _json_resource(resource: Any, where: str) -> dict[str, Any]:
    if resource is None:
        return {}
    if not isinstance(resource, dict):
        raise DecodeError(f"{where}.resource must be an object")
    try:
        return json_attributes(resource.get("attributes"))
    except _SpanProblem as exc:
        raise DecodeError(f"{where}.resource: {exc}") from None


def _json_add_span(decoded: Decoded, span: Any, resource: dict[str, Any]) -> None:
    try:
        decoded.spans.append(json_span(span, resource))
    except _SpanProblem as exc:
        ids = span if isinstance(span, dict) else {}
        decoded.rejected.append(
            Rejection(_shown_id(ids.get("traceId")), _shown_id(ids.get("spanId")), str(exc))
        )


def _shown_id(value: Any) -> str:
    return value[:_SHOWN_ID_CHARS].lower() if isinstance(value, str) else ""


def json_span(span: Any, resource: Mapping[str, Any]) -> SpanData:
    """One OTLP/JSON span object → :class:`SpanData` (raises ``_SpanProblem``)."""
    if not isinstance(span, dict):
        raise _SpanProblem("span must be a JSON object")
    status = span.get("status") or {}
    if not isinstance(status, dict):
        raise _SpanProblem("status must be an object")
    name = span.get("name", "")
    if not isinstance(name, str):
        raise _SpanProblem("name must be a string")
    message = status.get("message")
    if message is not None and not isinstance(message, str):
        raise _SpanProblem("status.message must be a string")
    return SpanData(
        trace_id=_hex_id(span.get("traceId"), "traceId"),
        span_id=_hex_id(span.get("spanId"), "spanId"),
        parent_span_id=_hex_id(span.get("parentSpanId"), "parentSpanId") or None,
        name=name,
        kind=kind_name(_enum(span.get("kind"), _KIND_ENUM, "kind")),
        start_ns=_uint64(span.get("startTimeUnixNano"), "startTimeUnixNano"),
        end_ns=_uint64(span.get("endTimeUnixNano"), "endTimeUnixNano"),
        attributes=json_attributes(span.get("attributes")),
        resource=resource,
        status=status_name(_enum(status.get("code"), _STATUS_ENUM, "status.code")),
        status_message=message or None,
    )


def _hex_id(value: Any, key: str) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str) or len(value) % 2 or not _HEX.fullmatch(value):
        raise _SpanProblem(f"{key} must be a hex string, not {_preview(value)}")
    return bytes.fromhex(value)


def _enum(value: Any, names: Mapping[str, int], key: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    raise _SpanProblem(f"{key} must be an integer enum value, not {_preview(value)}")


def _integer(value: Any, key: str) -> int:
    """An integer sent as a JSON number or a decimal string (OTLP/JSON's int64 form)."""
    if isinstance(value, bool):
        raise _SpanProblem(f"{key} must be an integer, not {_preview(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if digits.isdigit() and digits.isascii():
            if len(digits) <= 20:
                return int(text)
            # An integer, but longer than any int64/uint64 (the year 9999 in ns, say).
            raise _SpanProblem(f"{key} is out of range: {_preview(value)}")
    raise _SpanProblem(f"{key} must be an integer, not {_preview(value)}")


def _uint64(value: Any, key: str) -> int:
    if value is None:
        return 0
    number = _integer(value, key)
    if not 0 <= number <= _UINT64_MAX:
        raise _SpanProblem(f"{key} is out of range for a uint64: {number}")
    return number


def json_attributes(pairs: Any, depth: int = 0) -> dict[str, Any]:
    """An OTLP/JSON ``KeyValue`` array → dict (raises ``_SpanProblem``)."""
    if pairs is None:
        return {}
    if not isinstance(pairs, list):
        raise _SpanProblem("attributes must be an array")
    out: dict[str, Any] = {}
    for pair in pairs:
        if not isinstance(pair, dict) or not isinstance(pair.get("key"), str):
            raise _SpanProblem(f"attribute {_preview(pair)} must be an object with a string key")
        key: str = pair["key"]
        out[key] = json_value(pair.get("value"), key, depth)
    return out


def json_value(value: Any, key: str, depth: int = 0) -> Any:
    """One OTLP/JSON ``AnyValue`` (unset or unknown kinds read as None)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _SpanProblem(f"attribute {key!r}: value must be an object, not {_preview(value)}")
    if depth >= MAX_VALUE_DEPTH:
        raise _SpanProblem(f"attribute {key!r}: nested deeper than {MAX_VALUE_DEPTH} levels")
    if "stringValue" in value:
        text = value["stringValue"]
        if not isinstance(text, str):
            raise _SpanProblem(f"attribute {key!r}: stringValue must be a string")
        return text
    if "intValue" in value:
        number = _integer(value["intValue"], f"attribute {key!r}: intValue")
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise _SpanProblem(f"attribute {key!r}: intValue out of range for an int64")
        return number
    if "doubleValue" in value:
        return _double(value["doubleValue"], key)
    if "boolValue" in value:
        flag = value["boolValue"]
        if not isinstance(flag, bool):
            raise _SpanProblem(f"attribute {key!r}: boolValue must be true or false")
        return flag
    if "arrayValue" in value:
        items = _json_values_of(value["arrayValue"], key, "arrayValue")
        return [json_value(item, key, depth + 1) for item in items]
    if "kvlistValue" in value:
        pairs = _json_values_of(value["kvlistValue"], key, "kvlistValue")
        return json_attributes(pairs, depth + 1)
    if "bytesValue" in value:
        return _bytes(value["bytesValue"], key)
    return None


def _json_values_of(container: Any, key: str, kind: str) -> list[Any]:
    if not isinstance(container, dict):
        raise _SpanProblem(f"attribute {key!r}: {kind} must be an object")
    values = container.get("values", [])
    if not isinstance(values, list):
        raise _SpanProblem(f"attribute {key!r}: {kind}.values must be an array")
    return values


def _double(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # proto3 JSON: "NaN", "Infinity", "-Infinity", or a number
        try:
            return float(value)
        except ValueError:
            pass
    raise _SpanProblem(f"attribute {key!r}: doubleValue must be a number, not {_preview(value)}")


def _bytes(value: Any, key: str) -> bytes:
    if isinstance(value, str):
        try:  # proto3 JSON accepts standard and URL-safe base64, padded or not
            text = value.replace("-", "+").replace("_", "/")
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _SpanProblem(f"attribute {key!r}: bytesValue must be base64, not {_preview(value)}")


def _preview(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 60 else f"{text[:57]}..."
