from __future__ import annotations

import math

import pytest

from tokentrace import attributes as A
from tokentrace.dialects import as_token_count, infer_operation, normalize


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12),
        (0, 0),
        (12.0, 12),
        ("12", 12),
        (" 7 ", 7),
        (-1, None),
        (1e300, None),
        (math.nan, None),
        (math.inf, None),
        (12.5, None),
        ("12.5", None),
        ("-3", None),
        ("abc", None),
        (True, None),
        (None, None),
        ([1], None),
        (2**62, None),
    ],
)
def test_token_counts_are_coerced_or_missing(value: object, expected: int | None) -> None:
    assert as_token_count(value) == expected


def test_current_genai_names() -> None:
    facts = normalize(
        {
            A.GEN_AI_OPERATION_NAME: "chat",
            A.GEN_AI_PROVIDER_NAME: "ollama",
            A.GEN_AI_REQUEST_MODEL: "llama3.2",
            A.GEN_AI_RESPONSE_MODEL: "llama3.2:3b",
            A.GEN_AI_USAGE_INPUT_TOKENS: 10,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: 20,
            A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 4,
            A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 3,
            A.GEN_AI_REQUEST_STREAM: True,
            A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: 0.25,
        }
    )
    assert facts.operation == "chat"
    assert facts.provider == "ollama"
    assert facts.model == "llama3.2:3b"
    assert (facts.input_tokens, facts.output_tokens) == (10, 20)
    assert (facts.cache_read_tokens, facts.reasoning_tokens) == (4, 3)
    assert facts.stream is True
    assert facts.ttft_s == 0.25


def test_deprecated_genai_names() -> None:
    facts = normalize(
        {
            "gen_ai.system": "az.ai.openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.prompt_tokens": 5,
            "gen_ai.usage.completion_tokens": 6,
        }
    )
    assert facts.provider == "azure.ai.openai"
    assert (facts.input_tokens, facts.output_tokens) == (5, 6)
    assert facts.model == "gpt-4o"


def test_openllmetry_ollama() -> None:
    facts = normalize(
        {
            "gen_ai.system": "Ollama",
            "llm.request.type": "completion",
            "gen_ai.request.model": "llama3",
            "gen_ai.usage.input_tokens": 3,
            "gen_ai.usage.output_tokens": 9,
            "llm.usage.total_tokens": 12,
            "llm.is_streaming": True,
        }
    )
    assert facts.provider == "ollama"
    assert facts.operation == "text_completion"
    assert facts.stream is True
    assert facts.output_tokens == 9


def test_openinference() -> None:
    facts = normalize(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "mistral",
            "llm.provider": "ollama",
            "llm.token_count.prompt": 7,
            "llm.token_count.completion": 8,
            "llm.token_count.prompt_details.cache_read": 2,
        }
    )
    assert facts.operation == "chat"
    assert facts.model == "mistral"
    assert (facts.input_tokens, facts.output_tokens, facts.cache_read_tokens) == (7, 8, 2)


def test_openlit_seconds_valued_ttft_and_zero_when_not_streaming() -> None:
    streamed = normalize(
        {"gen_ai.request.model": "m", "gen_ai.request.stream": True, "gen_ai.server.time_to_first_token": 0.4}
    )
    assert streamed.ttft_s == 0.4
    not_streamed = normalize(
        {"gen_ai.request.model": "m", "gen_ai.request.stream": False, "gen_ai.server.time_to_first_token": 0.0}
    )
    assert not_streamed.ttft_s is None


def test_first_valid_key_wins_and_bad_values_fall_through() -> None:
    facts = normalize({"gen_ai.usage.output_tokens": "oops", "gen_ai.usage.completion_tokens": 4})
    assert facts.output_tokens == 4


def test_non_genai_span() -> None:
    facts = normalize({"http.method": "GET"})
    assert not facts.is_genai
    assert facts.model is None


@pytest.mark.parametrize(
    ("name", "attrs", "expected"),
    [
        ("whatever", {A.GEN_AI_OPERATION_NAME: "embeddings", A.GEN_AI_REQUEST_MODEL: "m"}, "embeddings"),
        ("x", {A.LLM_REQUEST_TYPE: "completion", A.GEN_AI_REQUEST_MODEL: "m"}, "text_completion"),
        ("chat llama3", {A.GEN_AI_REQUEST_MODEL: "llama3"}, "chat"),
        ("text_completion m", {A.GEN_AI_REQUEST_MODEL: "m"}, "text_completion"),
        ("ollama.chat", {A.GEN_AI_SYSTEM: "Ollama", A.GEN_AI_REQUEST_MODEL: "m"}, "chat"),
        ("ollama.generate", {A.GEN_AI_REQUEST_MODEL: "m"}, "text_completion"),
        ("openai.completion", {A.GEN_AI_REQUEST_MODEL: "m"}, "text_completion"),
        ("openai.embeddings", {A.GEN_AI_REQUEST_MODEL: "m"}, "embeddings"),
        ("ollama.embed", {A.GEN_AI_REQUEST_MODEL: "m"}, "embeddings"),
        ("ChatOllama.chat", {A.GEN_AI_REQUEST_MODEL: "m"}, "chat"),
        ("my_step", {A.GEN_AI_REQUEST_MODEL: "m", A.GEN_AI_USAGE_COMPLETION_TOKENS: 3}, "chat"),
        ("my_step", {A.GEN_AI_REQUEST_MODEL: "m", A.GEN_AI_USAGE_PROMPT_TOKENS: 3}, None),
        ("my_step", {A.GEN_AI_REQUEST_MODEL: "m"}, None),
        ("chat llama3", {}, None),  # not a GenAI span: nothing to infer
        ("", {A.GEN_AI_REQUEST_MODEL: "m"}, None),
    ],
)
def test_operation_inferred_where_the_attributes_name_none(
    name: str, attrs: dict[str, object], expected: str | None
) -> None:
    assert infer_operation(normalize(attrs), name) == expected
