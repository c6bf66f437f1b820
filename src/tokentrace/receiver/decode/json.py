"""OTLP/JSON (``application/json``) → :class:`SpanData`, walked by hand.

OTLP/JSON is *not* plain proto3 JSON, so ``google.protobuf.json_format`` is not used:

* ``traceId``, ``spanId`` and ``parentSpanId`` are hex strings (any case), not
  base64 — ``json_format.Parse`` would silently turn them into 24 garbage bytes;
* 64-bit integers (``startTimeUnixNano``, ``intValue``) are decimal strings, though
  plain JSON numbers are accepted too;
* enums (``kind``, ``status.code``) are integers (the enum names are accepted too);
* keys are lowerCamelCase; unknown keys are ignored.

A span the walk cannot read raises :class:`_SpanProblem` inside, which becomes that
span's :class:`Rejection`; see :mod:`tokentrace.receiver.decode` for what is refused
whole and what span by span.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from tokentrace.receiver.decode.results import (
    SHOWN_ID_CHARS,
    Decoded,
    DecodeError,
    Rejection,
    kind_name,
    status_name,
)
from tokentrace.store.rows import SpanData

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


class _SpanProblem(ValueError):
    """One span cannot be read; the other spans of the request are unaffected."""


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
    return value[:SHOWN_ID_CHARS].lower() if isinstance(value, str) else ""


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
