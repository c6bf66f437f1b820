"""Decoded spans to rows, without a database: shared resources, refused spans."""

from __future__ import annotations

from tokentrace.receiver.ingest import build_rows
from tokentrace.store.rows import COLUMNS, SpanData, build_row

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


def test_rows_are_those_build_row_makes_and_share_one_resource_dict() -> None:
    spans = [_span(bytes([0] * 7 + [i]), RESOURCE) for i in range(1, 4)]
    rows, sources, refused = build_rows(spans, 65_536)
    assert refused == [] and sources == spans
    assert [r.values for r in rows] == [build_row(s).values for s in spans]
    resource_at = COLUMNS.index("resource")
    assert rows[0].values[resource_at] is rows[2].values[resource_at]
    assert dict(zip(COLUMNS, rows[0].values))["ms_per_token"] == 50.0


def test_a_refused_span_is_reported_and_the_rest_built() -> None:
    other_resource = {"service.name": "other"}
    spans = [_span(b"\x00" * 8, RESOURCE), _span(b"\x00" * 7 + b"\x01", other_resource)]
    rows, sources, refused = build_rows(spans, 65_536)
    assert sources == spans[1:]
    assert dict(zip(COLUMNS, rows[0].values))["service_name"] == "other"
    [rejection] = refused
    assert rejection.describe() == (
        "span 0102030405060708090a0b0c0d0e0f10/0000000000000000: "
        "span_id must be 8 bytes, not all zero (got 8 bytes)"
    )
