"""The pure parts of tokentrace.litellm_router: which tokentrace model a deployment is,
and how big a request is."""

from __future__ import annotations

import os

import pytest

from tests.helpers import require_optional

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
require_optional("litellm", "the LiteLLM routing strategy (extra 'litellm')")

from tokentrace.litellm_router import (  # noqa: E402
    TokentraceRoutingStrategy,
    estimate_prompt_tokens,
    requested_output_tokens,
    tokentrace_model,
)


@pytest.mark.parametrize(
    ("deployment", "model"),
    [
        ({"litellm_params": {"model": "ollama_chat/llama3.2"}}, "llama3.2"),
        ({"litellm_params": {"model": "openai/meta-llama/Llama-3.1-8B"}}, "meta-llama/Llama-3.1-8B"),
        ({"litellm_params": {"model": "hosted_vllm/qwen2.5:7b"}}, "qwen2.5:7b"),
        # a first segment that is no LiteLLM provider is part of the name
        ({"litellm_params": {"model": "meta-llama/Llama-3.1-8B"}}, "meta-llama/Llama-3.1-8B"),
        ({"litellm_params": {"model": "gpt-4o"}}, "gpt-4o"),
        (
            {"litellm_params": {"model": "openai/served"}, "model_info": {"tokentrace_model": "m:7b"}},
            "m:7b",
        ),
        ({"litellm_params": {"model": "openai/x"}, "model_info": {"tokentrace_model": ""}}, "x"),
        ({"litellm_params": {}}, None),
        ({}, None),
    ],
)
def test_the_tokentrace_model_of_a_deployment(deployment: dict[str, object], model: str | None) -> None:
    assert tokentrace_model(deployment) == model


def test_prompt_tokens_are_characters_over_four_plus_four_per_message() -> None:
    assert estimate_prompt_tokens([{"role": "user", "content": "x" * 400}]) == 4 + 100
    assert estimate_prompt_tokens([{"role": "user", "content": "x" * 401}]) == 4 + 101
    two = [{"role": "system", "content": "abcd" * 10}, {"role": "user", "content": "hi"}]
    assert estimate_prompt_tokens(two) == 4 + 10 + 4 + 1
    parts = [{"role": "user", "content": [{"type": "text", "text": "x" * 40},
                                          {"type": "image_url", "image_url": {"url": "data:..."}}]}]
    assert estimate_prompt_tokens(parts) == 4 + 10
    assert estimate_prompt_tokens(None, input=["x" * 8, "y" * 4]) == 3
    assert estimate_prompt_tokens(None, input="x" * 12) == 3
    assert estimate_prompt_tokens([]) == 1
    assert estimate_prompt_tokens(None) == 1


def test_output_tokens_are_the_requests_limit_else_the_default_and_none_for_embeddings() -> None:
    assert requested_output_tokens({"max_tokens": 50}, 256, embedding=False) == 50
    assert requested_output_tokens({"max_completion_tokens": 70, "max_tokens": 50}, 256,
                                   embedding=False) == 70
    assert requested_output_tokens({"max_tokens": 0}, 256, embedding=False) == 256
    assert requested_output_tokens({"max_tokens": True}, 256, embedding=False) == 256
    assert requested_output_tokens({"max_tokens": "50"}, 256, embedding=False) == 256
    assert requested_output_tokens(None, 256, embedding=False) == 256
    assert requested_output_tokens({"max_tokens": 50}, 256, embedding=True) == 0


def test_bad_settings_are_refused_when_the_strategy_is_made() -> None:
    with pytest.raises(ValueError, match="default_output_tokens must be >= 0, not -1"):
        TokentraceRoutingStrategy(object(), default_output_tokens=-1)
    with pytest.raises(ValueError, match="retry_after_s must be >= 0, not -2"):
        TokentraceRoutingStrategy(object(), retry_after_s=-2)
