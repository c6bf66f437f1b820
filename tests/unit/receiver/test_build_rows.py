"""Decoded spans to rows, without a database: shared resources, refused spans."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.unit.hostile.strategies import FUZZ, json_body, json_requests, pb_requests
from tokentrace.receiver.decode import Decoded, DecodeError, decode_json, decode_protobuf
from tokentrace.receiver.ingest import build_rows
from tokentrace.store.rows import COLUMNS, RowError, SpanData, WireRow, build_row, wire_row

RESOURCE = {"service.name": "svc", "host.name": "box"}


def _span(span_id: bytes, resource: dict[str, str]) -> SpanData:
    return SpanData(
        trace_id=bytes(range(1, 17)),
        span_id=span_id,
        parent_span_id=None,
        name="chat m",
        kind="CLIENT",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_001_000_000_000,
        attributes={"gen_ai.request.model": "m", "gen_ai.usage.output_tokens": 20},
        resource=resource,
    )


def test_rows_are_those_build_row_makes_and_share_one_resource_encoding() -> None:
    spans = [_span(bytes([0] * 7 + [i]), RESOURCE) for i in range(1, 4)]
    rows, sources, refused = build_rows(spans, 65_536)
    assert refused == [] and sources == spans
    assert rows == [wire_row(build_row(s)) for s in spans]
    resource_at = COLUMNS.index("resource")
    assert rows[0][resource_at] is rows[2][resource_at]
    assert dict(zip(COLUMNS, rows[0]))["ms_per_token"] == 50.0


def test_a_refused_span_is_reported_and_the_rest_built() -> None:
    other_resource = {"service.name": "other"}
    spans = [_span(b"\x00" * 8, RESOURCE), _span(b"\x00" * 7 + b"\x01", other_resource)]
    rows, sources, refused = build_rows(spans, 65_536)
    assert sources == spans[1:]
    assert dict(zip(COLUMNS, rows[0]))["service_name"] == "other"
    [rejection] = refused
    assert rejection.describe() == (
        "span 0102030405060708090a0b0c0d0e0f10/0000000000000000: "
        "span_id must be 8 bytes, not all zero (got 8 bytes)"
    )


# --- the receiver's one-step rows are the two-step rows, for hostile input too -------
LIMIT = 64  # the smallest cut allowed: truncation on nearly every string


def _two_steps(spans: list[SpanData]) -> tuple[list[WireRow], list[str]]:
    rows, refused = [], []
    for span in spans:
        try:
            rows.append(wire_row(build_row(span, LIMIT)))
        except RowError as exc:
            refused.append(str(exc))
    return rows, refused


def _assert_same_as_two_steps(decoded: Decoded) -> None:
    rows, sources, refused = build_rows(decoded.spans, LIMIT)
    expected_rows, expected_refused = _two_steps(decoded.spans)
    # repr: a NaN stored as a float compares unequal to itself.
    assert repr(rows) == repr(expected_rows)
    assert [r.reason for r in refused] == expected_refused
    assert len(sources) == len(rows)


@FUZZ
@given(pb_requests)
def test_one_step_rows_equal_two_step_rows_protobuf(request: ExportTraceServiceRequest) -> None:
    _assert_same_as_two_steps(decode_protobuf(request.SerializeToString()))


@FUZZ
@given(json_requests, st.booleans())
def test_one_step_rows_equal_two_step_rows_json(document: Any, ascii_only: bool) -> None:
    try:
        decoded = decode_json(json_body(document, ascii_only))
    except DecodeError:
        return
    _assert_same_as_two_steps(decoded)
