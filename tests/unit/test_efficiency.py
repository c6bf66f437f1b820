from __future__ import annotations

import pytest

from tokentrace import attributes as A
from tokentrace.dialects import normalize
from tokentrace.efficiency import derive, per_token


def _derive(attrs: dict[str, object], duration_ms: float | None) -> dict[str, object]:
    return derive(normalize(attrs), attrs, duration_ms).as_attributes()


BASE = {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "m"}


def test_ms_per_token_is_wall_time_over_output_tokens() -> None:
    out = _derive({**BASE, A.GEN_AI_USAGE_OUTPUT_TOKENS: 50}, 1000.0)
    assert out == {
        A.TT_INFERENCE_MS: 1000.0,
        A.TT_MS_PER_TOKEN: 20.0,
        A.TT_TOKEN_SOURCE: "reported",
    }


def test_model_load_inside_the_call_is_excluded() -> None:
    attrs = {
        **BASE,
        A.GEN_AI_USAGE_INPUT_TOKENS: 40,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 100,
        A.TT_SERVER_LOAD_NS: 2_000_000_000,
        A.TT_SERVER_PROMPT_EVAL_NS: 80_000_000,
        A.TT_SERVER_EVAL_NS: 900_000_000,
    }
    out = _derive(attrs, 3000.0)
    assert out[A.TT_LOAD_MS] == 2000.0
    assert out[A.TT_INFERENCE_MS] == 1000.0
    assert out[A.TT_MS_PER_TOKEN] == 10.0
    assert out[A.TT_DECODE_MS_PER_TOKEN] == 9.0
    assert out[A.TT_PREFILL_MS_PER_TOKEN] == 2.0


@pytest.mark.parametrize("tokens", [0, -1, None, "x", float("nan"), 1e300])
def test_zero_missing_or_bad_tokens_give_no_ratio(tokens: object) -> None:
    attrs = dict(BASE)
    if tokens is not None:
        attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = tokens
    out = _derive(attrs, 500.0)
    assert A.TT_MS_PER_TOKEN not in out
    expected_source = "reported" if tokens == 0 else "missing"
    assert out[A.TT_TOKEN_SOURCE] == expected_source


def test_end_before_start_gives_no_duration_figures() -> None:
    out = _derive({**BASE, A.GEN_AI_USAGE_OUTPUT_TOKENS: 10}, None)
    assert A.TT_INFERENCE_MS not in out and A.TT_MS_PER_TOKEN not in out
    assert _derive({**BASE, A.GEN_AI_USAGE_OUTPUT_TOKENS: 10}, -5.0).get(A.TT_MS_PER_TOKEN) is None


def test_stream_timing_gives_decode_and_ttft() -> None:
    attrs = {
        **BASE,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 11,
        A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: 0.2,
        A.TT_STREAM_GENERATION_MS: 500.0,
    }
    out = _derive(attrs, 800.0)
    assert out[A.TT_TTFT_MS] == 200.0
    assert out[A.TT_DECODE_MS_PER_TOKEN] == 50.0


def test_load_span_reports_load_ms_only() -> None:
    out = _derive({A.GEN_AI_OPERATION_NAME: "load_model", A.GEN_AI_REQUEST_MODEL: "m"}, 1234.5)
    assert out == {A.TT_LOAD_MS: 1234.5}


def test_estimated_tokens_keep_their_source() -> None:
    out = _derive({**BASE, A.GEN_AI_USAGE_OUTPUT_TOKENS: 4, A.TT_TOKEN_SOURCE: "estimated"}, 40.0)
    assert out[A.TT_TOKEN_SOURCE] == "estimated"


def test_per_token_never_divides_by_zero() -> None:
    assert per_token(10.0, 0) is None
    assert per_token(None, 3) is None
    assert per_token(-1.0, 3) is None
    assert per_token(9.0, 3) == 3.0


def test_non_genai_span_derives_nothing() -> None:
    assert _derive({"http.route": "/"}, 10.0) == {}


def test_a_time_to_first_chunk_too_large_for_milliseconds_is_unknown() -> None:
    attrs = {**BASE, A.GEN_AI_USAGE_OUTPUT_TOKENS: 3, A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: 1e306}
    out = _derive(attrs, 10.0)
    assert A.TT_TTFT_MS not in out
    assert out[A.TT_MS_PER_TOKEN] == 10.0 / 3
