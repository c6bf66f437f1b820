"""OTLP protobuf and JSON decoding, without any server or database."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from tokentrace.receiver import wire
from tokentrace.receiver.decode import DecodeError, decode_json, decode_protobuf
from tokentrace.store.rows import COLUMNS, build_row

TRACE_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_HEX = "eee19b7ec3c1b174"
PARENT_HEX = "eee19b7ec3c1b173"

# opentelemetry-proto examples/trace.json, verbatim.
SPEC_EXAMPLE = """
{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          {
            "key": "service.name",
            "value": {
              "stringValue": "my.service"
            }
          }
        ]
      },
      "scopeSpans": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              {
                "key": "my.scope.attribute",
                "value": {
                  "stringValue": "some scope attribute"
                }
              }
            ]
          },
          "spans": [
            {
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "parentSpanId": "EEE19B7EC3C1B173",
              "name": "I'm a server span",
              "startTimeUnixNano": 1544712660000000000,
              "endTimeUnixNano": 1544712661000000000,
              "kind": 2,
              "attributes": [
                {
                  "key": "my.span.attr",
                  "value": {
                    "stringValue": "some value"
                  }
                }
              ]
            }
          ]
        }
      ]
    }
  ]
}
"""


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def _pb_request(*spans: Span, resource: dict[str, str] | None = None) -> bytes:
    attrs = [
        _kv(k, AnyValue(string_value=v)) for k, v in (resource or {"service.name": "svc"}).items()
    ]
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=attrs),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="lib"), spans=list(spans))],
            )
        ]
    )
    body: bytes = request.SerializeToString()
    return body


def _pb_span(**overrides: Any) -> Span:
    fields: dict[str, Any] = {
        "trace_id": bytes.fromhex(TRACE_HEX),
        "span_id": bytes.fromhex(SPAN_HEX),
        "parent_span_id": bytes.fromhex(PARENT_HEX),
        "name": "chat llama3.2",
        "kind": Span.SPAN_KIND_CLIENT,
        "start_time_unix_nano": 1_700_000_000_000_000_000,
        "end_time_unix_nano": 1_700_000_002_000_000_000,
    }
    fields.update(overrides)
    return Span(**fields)


def _json_request(*spans: Any, resource: list[Any] | None = None) -> bytes:
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": resource
                    or [{"key": "service.name", "value": {"stringValue": "svc"}}]
                },
                "scopeSpans": [{"scope": {"name": "lib"}, "spans": list(spans)}],
            }
        ]
    }
    return json.dumps(document).encode()


def _json_span(**overrides: Any) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": TRACE_HEX,
        "spanId": SPAN_HEX,
        "parentSpanId": PARENT_HEX,
        "name": "chat llama3.2",
        "kind": 3,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000002000000000",
    }
    span.update(overrides)
    return span


# --- protobuf -----------------------------------------------------------------------
def test_protobuf_span_fields_and_every_attribute_type() -> None:
    attributes = [
        _kv("gen_ai.request.model", AnyValue(string_value="llama3.2")),
        _kv("gen_ai.usage.output_tokens", AnyValue(int_value=100)),
        _kv("gen_ai.request.temperature", AnyValue(double_value=0.5)),
        _kv("gen_ai.request.stream", AnyValue(bool_value=True)),
        _kv("raw", AnyValue(bytes_value=b"\x00\xff")),
        _kv(
            "gen_ai.response.finish_reasons",
            AnyValue(
                array_value=ArrayValue(
                    values=[AnyValue(string_value="stop"), AnyValue(int_value=2)]
                )
            ),
        ),
        _kv(
            "nested", AnyValue(kvlist_value=KeyValueList(values=[_kv("a", AnyValue(int_value=1))]))
        ),
        _kv("empty", AnyValue()),
    ]
    span = _pb_span(
        attributes=attributes, status=Status(code=Status.STATUS_CODE_ERROR, message="boom")
    )
    decoded = decode_protobuf(_pb_request(span))
    assert decoded.rejected == []
    [data] = decoded.spans
    assert data.trace_id == bytes.fromhex(TRACE_HEX)
    assert data.span_id == bytes.fromhex(SPAN_HEX)
    assert data.parent_span_id == bytes.fromhex(PARENT_HEX)
    assert data.name == "chat llama3.2"
    assert data.kind == "CLIENT"
    assert (data.start_ns, data.end_ns) == (1_700_000_000_000_000_000, 1_700_000_002_000_000_000)
    assert data.status == "ERROR" and data.status_message == "boom"
    assert data.resource == {"service.name": "svc"}
    assert data.attributes == {
        "gen_ai.request.model": "llama3.2",
        "gen_ai.usage.output_tokens": 100,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": True,
        "raw": b"\x00\xff",
        "gen_ai.response.finish_reasons": ["stop", 2],
        "nested": {"a": 1},
        "empty": None,
    }


def test_protobuf_root_span_has_no_parent_and_unset_status() -> None:
    [data] = decode_protobuf(_pb_request(_pb_span(parent_span_id=b"", kind=0))).spans
    assert data.parent_span_id is None
    assert data.kind == "INTERNAL"  # SPAN_KIND_UNSPECIFIED reads as INTERNAL
    assert data.status == "UNSET" and data.status_message is None


def test_protobuf_spans_of_every_resource_and_scope() -> None:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[_kv("service.name", AnyValue(string_value=f"svc{r}"))]
                ),
                scope_spans=[
                    ScopeSpans(spans=[_pb_span(name=f"{r}.{s}.{i}") for i in range(2)])
                    for s in range(2)
                ],
            )
            for r in range(2)
        ]
    )
    spans = decode_protobuf(request.SerializeToString()).spans
    assert [s.name for s in spans] == [
        f"{r}.{s}.{i}" for r in range(2) for s in range(2) for i in range(2)
    ]
    assert [s.resource["service.name"] for s in spans] == ["svc0"] * 4 + ["svc1"] * 4


def test_protobuf_empty_request_is_no_spans() -> None:
    decoded = decode_protobuf(b"")
    assert decoded.spans == [] and decoded.rejected == [] and decoded.total == 0


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"not a protobuf at all", b"\x0a\x05\x0a"])
def test_protobuf_garbage_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="not a protobuf ExportTraceServiceRequest"):
        decode_protobuf(body)


def test_protobuf_bad_id_lengths_pass_through_for_build_row_to_refuse() -> None:
    [data] = decode_protobuf(_pb_request(_pb_span(span_id=b"\x01\x02\x03\x04\x05"))).spans
    assert data.span_id == b"\x01\x02\x03\x04\x05"


# Same length as the placeholder it replaces, so the framing stays right.
_PLACEHOLDER, _NOT_UTF8 = b"PLACEHOLDER", b"bad\xff\xfe\xc0\x80!!!!"
_GOOD_ID = "0102030405060708"


def _not_utf8(body: bytes) -> bytes:
    assert body.count(_PLACEHOLDER) == 1
    return body.replace(_PLACEHOLDER, _NOT_UTF8)


def _two_resources(first: dict[str, str], *spans: Span) -> bytes:
    """A request of two resources: ``first`` with ``spans``, then svc2 with a good span."""
    parts = [
        _pb_request(*spans, resource=first),
        _pb_request(_pb_span(span_id=bytes.fromhex(_GOOD_ID))),
    ]
    merged = ExportTraceServiceRequest()
    for part in parts:
        merged.MergeFromString(part)
    body: bytes = merged.SerializeToString()
    return body


def test_protobuf_span_that_is_not_utf8_is_rejected_and_the_others_kept() -> None:
    bad = _pb_span(attributes=[_kv("gen_ai.request.model", AnyValue(string_value="PLACEHOLDER"))])
    body = _not_utf8(
        _pb_request(_pb_span(span_id=bytes.fromhex(_GOOD_ID)), bad, _pb_span(name="third"))
    )
    decoded = decode_protobuf(body)
    assert [s.span_id.hex() for s in decoded.spans] == [_GOOD_ID, SPAN_HEX]
    assert [s.name for s in decoded.spans] == ["chat llama3.2", "third"]
    assert decoded.spans[0].resource == {"service.name": "svc"}
    [rejection] = decoded.rejected
    assert (rejection.trace_id, rejection.span_id) == (TRACE_HEX, SPAN_HEX)
    assert rejection.reason == (
        "not a valid protobuf Span (Error parsing message with type "
        "'opentelemetry.proto.trace.v1.Span': String field had bad UTF-8)"
    )
    assert decoded.total == 3


def test_protobuf_resource_that_is_not_utf8_rejects_its_spans_only() -> None:
    body = _not_utf8(_two_resources({"service.name": "PLACEHOLDER"}, _pb_span(), _pb_span()))
    decoded = decode_protobuf(body)
    assert [s.span_id.hex() for s in decoded.spans] == [_GOOD_ID]
    assert [r.reason.split(" (")[0] for r in decoded.rejected] == [
        "its resource is not a valid protobuf Resource"
    ] * 2
    assert decoded.total == 3


def test_protobuf_scope_that_is_not_utf8_costs_nothing() -> None:
    request = ExportTraceServiceRequest.FromString(_pb_request(_pb_span()))
    request.resource_spans[0].scope_spans[0].scope.name = "PLACEHOLDER"
    decoded = decode_protobuf(_not_utf8(request.SerializeToString()))
    assert [s.span_id.hex() for s in decoded.spans] == [SPAN_HEX] and decoded.rejected == []


def test_wire_framing_finds_what_the_message_classes_find() -> None:
    body = _two_resources({"service.name": "a"}, _pb_span(), _pb_span(name="x"))
    request = ExportTraceServiceRequest.FromString(body)
    parts = wire.messages(body, 1)
    assert [ResourceSpans.FromString(p) for p in parts] == list(request.resource_spans)
    spans = [
        raw for part in parts for scope in wire.messages(part, 2) for raw in wire.messages(scope, 2)
    ]
    assert [Span.FromString(raw) for raw in spans] == [
        span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans
    ]
    first = _pb_span().SerializeToString()
    assert [(n, t) for n, t, _, _ in wire.fields(first)] == [
        (1, 2),
        (2, 2),
        (4, 2),
        (5, 2),
        (6, 0),
        (7, 1),
        (8, 1),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x03\x12\x05\x0a",  # a resource_spans whose scope_spans runs past its end
        b"\x0a\x02\x12\x80",  # a length cut off inside a resource_spans
        b"\x0a\x01\x07",  # a group (deprecated wire type) inside a resource_spans
    ],
)
def test_protobuf_broken_framing_below_the_request_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="not a protobuf ExportTraceServiceRequest"):
        decode_protobuf(body)


# --- JSON ---------------------------------------------------------------------------
def test_json_spec_example_ids_times_and_attributes() -> None:
    decoded = decode_json(SPEC_EXAMPLE.encode())
    assert decoded.rejected == []
    [data] = decoded.spans
    assert data.trace_id == bytes.fromhex("5B8EFFF798038103D269B633813FC60C")
    assert len(data.trace_id) == 16 and len(data.span_id) == 8
    assert data.span_id == bytes.fromhex("EEE19B7EC3C1B174")
    assert data.parent_span_id == bytes.fromhex("EEE19B7EC3C1B173")
    assert data.name == "I'm a server span"
    assert data.kind == "SERVER"
    assert (data.start_ns, data.end_ns) == (1544712660000000000, 1544712661000000000)
    assert data.attributes == {"my.span.attr": "some value"}
    assert data.resource == {"service.name": "my.service"}
    assert data.status == "UNSET"


def test_json_int64_as_strings_and_every_value_type() -> None:
    attributes = [
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 34}},
        {"key": "big", "value": {"intValue": "-9223372036854775808"}},
        {"key": "ratio", "value": {"doubleValue": 0.25}},
        {"key": "ratio_text", "value": {"doubleValue": "1.5"}},
        {"key": "not_a_number", "value": {"doubleValue": "NaN"}},
        {"key": "flag", "value": {"boolValue": False}},
        {"key": "raw", "value": {"bytesValue": base64.b64encode(b"\x00\xff").decode()}},
        {
            "key": "list",
            "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}},
        },
        {
            "key": "map",
            "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": True}}]}},
        },
        {"key": "empty", "value": {}},
        {"key": "unknown_kind", "value": {"someFutureValue": 1}},
        {"key": "no_value"},
    ]
    [data] = decode_json(_json_request(_json_span(attributes=attributes))).spans
    attrs = dict(data.attributes)
    assert math.isnan(attrs.pop("not_a_number"))
    assert attrs == {
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "big": -(2**63),
        "ratio": 0.25,
        "ratio_text": 1.5,
        "flag": False,
        "raw": b"\x00\xff",
        "list": ["a", 2],
        "map": {"k": True},
        "empty": None,
        "unknown_kind": None,
        "no_value": None,
    }
    assert (data.start_ns, data.end_ns) == (1_700_000_000_000_000_000, 1_700_000_002_000_000_000)


def test_json_enum_names_status_and_unknown_fields() -> None:
    span = _json_span(
        kind="SPAN_KIND_PRODUCER",
        status={"code": "STATUS_CODE_OK", "message": "fine"},
        events=[{"name": "ignored"}],
        links=[],
        flags=257,
        someFutureField={"x": 1},
    )
    [data] = decode_json(_json_request(span)).spans
    assert data.kind == "PRODUCER"
    assert data.status == "OK" and data.status_message == "fine"


@pytest.mark.parametrize(
    "kind,name",
    [
        (0, "INTERNAL"),
        (1, "INTERNAL"),
        (2, "SERVER"),
        (3, "CLIENT"),
        (4, "PRODUCER"),
        (5, "CONSUMER"),
        (9, "INTERNAL"),
    ],
)
def test_json_kind_numbers(kind: int, name: str) -> None:
    [data] = decode_json(_json_request(_json_span(kind=kind))).spans
    assert data.kind == name


def test_json_and_protobuf_give_the_same_row() -> None:
    pb = _pb_span(
        attributes=[
            _kv("gen_ai.operation.name", AnyValue(string_value="chat")),
            _kv("gen_ai.request.model", AnyValue(string_value="llama3.2")),
            _kv("gen_ai.usage.input_tokens", AnyValue(int_value=7)),
            _kv("gen_ai.usage.output_tokens", AnyValue(int_value=100)),
        ]
    )
    js = _json_span(
        attributes=[
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "llama3.2"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "7"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "100"}},
        ]
    )
    from_pb = build_row(decode_protobuf(_pb_request(pb)).spans[0]).values
    from_json = build_row(decode_json(_json_request(js)).spans[0]).values
    assert from_pb == from_json
    row = dict(zip(COLUMNS, from_json))
    assert (
        row["model"] == "llama3.2" and row["output_tokens"] == 100 and row["ms_per_token"] == 20.0
    )


@pytest.mark.parametrize(
    "overrides,reason",
    [
        ({"traceId": "zz8efff798038103d269b633813fc60c"}, "traceId must be a hex string"),
        ({"spanId": "eee19b7ec3c1b17"}, "spanId must be a hex string"),
        (
            {"spanId": "7u4ZfsPBsXQ="},
            "spanId must be a hex string",
        ),  # base64, as json_format would send
        ({"parentSpanId": 12}, "parentSpanId must be a hex string"),
        ({"name": 5}, "name must be a string"),
        ({"kind": "CLIENT"}, "kind must be an integer enum value"),
        ({"startTimeUnixNano": "1.5e18"}, "startTimeUnixNano must be an integer"),
        ({"endTimeUnixNano": "-1"}, "endTimeUnixNano is out of range"),
        ({"endTimeUnixNano": True}, "endTimeUnixNano must be an integer"),
        ({"attributes": {"k": "v"}}, "attributes must be an array"),
        ({"attributes": [{"key": 1, "value": {}}]}, "must be an object with a string key"),
        (
            {"attributes": [{"key": "n", "value": {"intValue": "twelve"}}]},
            "'n': intValue must be an integer",
        ),
        (
            {"attributes": [{"key": "n", "value": {"intValue": str(2**63)}}]},
            "out of range for an int64",
        ),
        (
            {"attributes": [{"key": "s", "value": {"stringValue": 3}}]},
            "stringValue must be a string",
        ),
        (
            {"attributes": [{"key": "b", "value": {"boolValue": "true"}}]},
            "boolValue must be true or false",
        ),
        (
            {"attributes": [{"key": "d", "value": {"doubleValue": "fast"}}]},
            "doubleValue must be a number",
        ),
        (
            {"attributes": [{"key": "x", "value": {"bytesValue": "***"}}]},
            "bytesValue must be base64",
        ),
        (
            {"attributes": [{"key": "a", "value": {"arrayValue": []}}]},
            "arrayValue must be an object",
        ),
        ({"attributes": [{"key": "v", "value": "plain"}]}, "value must be an object"),
        ({"status": "ERROR"}, "status must be an object"),
        ({"status": {"message": 1}}, "status.message must be a string"),
    ],
)
def test_json_malformed_span_is_rejected_and_the_others_kept(
    overrides: dict[str, Any], reason: str
) -> None:
    good = _json_span(spanId="0102030405060708")
    bad = _json_span(**overrides)
    decoded = decode_json(_json_request(good, bad))
    assert [s.span_id for s in decoded.spans] == [bytes.fromhex("0102030405060708")]
    [rejection] = decoded.rejected
    assert reason in rejection.reason
    assert decoded.total == 2


def test_json_rejection_names_the_span() -> None:
    decoded = decode_json(_json_request(_json_span(name=[]), "not a span"))
    first, second = decoded.rejected
    assert first.describe() == f"span {TRACE_HEX}/{SPAN_HEX}: name must be a string"
    assert second.describe() == "span ?/?: span must be a JSON object"


def test_json_nesting_is_bounded() -> None:
    value: dict[str, Any] = {"stringValue": "deep"}
    for _ in range(100):
        value = {"arrayValue": {"values": [value]}}
    decoded = decode_json(_json_request(_json_span(attributes=[{"key": "deep", "value": value}])))
    assert decoded.spans == []
    assert "nested deeper than 64 levels" in decoded.rejected[0].reason


def test_json_hex_ids_in_any_case() -> None:
    [data] = decode_json(
        _json_request(_json_span(traceId=TRACE_HEX.upper(), spanId="EeE19b7EC3c1B174"))
    ).spans
    assert data.trace_id == bytes.fromhex(TRACE_HEX) and data.span_id == bytes.fromhex(SPAN_HEX)


def test_json_missing_ids_are_left_for_build_row() -> None:
    [data] = decode_json(_json_request({"name": "no ids"})).spans
    assert data.trace_id == b"" and data.span_id == b"" and data.parent_span_id is None


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"resourceSpans": {}}', "request.resourceSpans must be an array"),
        (b'{"resourceSpans": [1]}', "resourceSpans[0] must be an object"),
        (
            b'{"resourceSpans": [{"scopeSpans": "x"}]}',
            "resourceSpans[0].scopeSpans must be an array",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": 3}]}]}',
            "scopeSpans[0].spans must be an array",
        ),
        (
            b'{"resourceSpans": [{"resource": {"attributes": 5}}]}',
            "resource: attributes must be an array",
        ),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_json_undecodable_request(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_json(body)


def test_json_empty_object_is_no_spans() -> None:
    assert decode_json(b"{}").total == 0
    assert decode_json(b'{"resourceSpans": []}').total == 0
