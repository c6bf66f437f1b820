"""The inputs the fuzzers found that broke something, kept as plain tests."""

from __future__ import annotations

import json

from tests.unit.hostile.strategies import assert_storable
from tokentrace import attributes as A
from tokentrace.dialects import as_number, as_token_count, normalize
from tokentrace.receiver.decode import decode_json
from tokentrace.store.rows import SpanData, build_row


def _span(attributes: dict[str, object]) -> SpanData:
    return SpanData(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        parent_span_id=None,
        name="n",
        kind="CLIENT",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_001_000_000_000,
        attributes=attributes,
    )


def test_a_superscript_digit_is_not_a_token_count() -> None:
    """ "²".isdigit() is true but int("²") raises: normalize() must not."""
    assert as_token_count("²") is None
    assert normalize({"gen_ai.usage.output_tokens": "²"}).output_tokens is None
    assert as_token_count("١٢") == 12  # decimal digits of any script still count


def test_an_int_beyond_float_range_is_not_a_number() -> None:
    assert as_number(10**400) is None
    build_row(_span({A.TT_SERVER_EVAL_NS: 10**400, A.GEN_AI_USAGE_OUTPUT_TOKENS: 5}))


def test_a_change_to_a_value_is_labelled_with_the_cleaned_key() -> None:
    """The labels go into the stored ``tokentrace.sanitized`` list: a raw key with NUL
    made PostgreSQL refuse the row, one with a lone surrogate failed the whole batch."""
    for key in ("k\x00", "k\ud800"):
        row = build_row(_span({key: "v\x00", "deep" + key: [[["x\x00"]]]}))
        assert_storable(row, 65_536)
        sanitized = row.values[-2]["tokentrace.sanitized"]
        assert all("\x00" not in label for label in sanitized)


def test_a_time_beyond_uint64_is_refused_as_out_of_range() -> None:
    body = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "01" * 16,
                                "spanId": "02" * 8,
                                "startTimeUnixNano": "253402300799000000000",  # the year 9999
                            }
                        ]
                    }
                ]
            }
        ]
    }
    [rejection] = decode_json(json.dumps(body).encode()).rejected
    assert rejection.reason.startswith("startTimeUnixNano is out of range")
