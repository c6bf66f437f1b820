"""tokentrace's routing strategy in the real ``litellm.Router``, against stand-in
OpenAI-compatible servers on localhost and spans stored in a real PostgreSQL.

Three deployments of one model group, each a ``FakeOpenAI`` of its own: ``m-decode``
decodes fast and prefills slowly, ``m-prefill`` the reverse, and ``m-slow`` (served as
``served-slow``, named for tokentrace by ``model_info["tokentrace_model"]``) is slow at
both. Which one tokentrace ranks first depends on the request: a long prompt with a
short answer goes to ``m-prefill``, a short prompt with a long answer to ``m-decode``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakeservers import FakeOpenAI, Script
from tests.helpers import require_optional

# litellm fetches its model cost map from GitHub when imported, unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = require_optional("litellm", "the LiteLLM routing strategy (extra 'litellm')")

from tokentrace import attributes as A  # noqa: E402
from tokentrace.expected import expected_latency  # noqa: E402
from tokentrace.litellm_router import (  # noqa: E402
    METADATA_KEY,
    TokentraceRoutingStrategy,
    estimate_prompt_tokens,
    route_by_expected_latency,
)

GROUP = "chat"
# model -> (intercept ms, prefill ms/token, decode ms/token)
COSTS = {"m-decode": (20.0, 2.0, 5.0), "m-prefill": (20.0, 0.1, 20.0), "m-slow": (100.0, 3.0, 40.0)}
LONG_PROMPT = [{"role": "user", "content": "word " * 1600}]  # 8,000 characters: ~2,000 tokens
SHORT_PROMPT = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
def servers() -> Iterator[dict[str, FakeOpenAI]]:
    started = {
        "m-decode": FakeOpenAI({"m-decode": Script()}).start(),
        "m-prefill": FakeOpenAI({"m-prefill": Script()}).start(),
        "m-slow": FakeOpenAI({"served-slow": Script()}).start(),
    }
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
def closing() -> Iterator[list[TokentraceRoutingStrategy]]:
    """Strategies to close (their kept connections) after the test."""
    made: list[TokentraceRoutingStrategy] = []
    yield made
    for strategy in made:
        strategy.close()


def _router(servers: dict[str, FakeOpenAI], slow_name: str = "m-slow") -> Any:
    def deployment(key: str, served: str, **info: str) -> dict[str, Any]:
        return {
            "model_name": GROUP,
            "litellm_params": {
                "model": f"openai/{served}",
                "api_base": f"{servers[key].url}/v1",
                "api_key": "sk-test",
            },
            "model_info": {"id": key, **info},
        }

    return litellm.Router(
        model_list=[
            deployment("m-decode", "m-decode"),
            deployment("m-prefill", "m-prefill"),
            deployment("m-slow", "served-slow", tokentrace_model=slow_name),
        ]
    )


def _store_calls(dsn: str, calls_per_model: int = 30) -> None:
    """Finished calls of the three models over the last half hour, as the OpenAI
    instrumentation records them (no server timings: the duration is the time),
    through tokentrace's real exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    from tokentrace.exporter import PostgresSpanExporter
    from tokentrace.processor import TokenEfficiencySpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(TokenEfficiencySpanProcessor(BatchSpanProcessor(PostgresSpanExporter(dsn))))
    tracer = provider.get_tracer("test_litellm_router")
    rng = random.Random(7)
    now = dt.datetime.now(dt.timezone.utc)
    for model, (intercept, prefill, decode) in COSTS.items():
        for i in range(calls_per_model):
            prompt, output = rng.randint(10, 3000), rng.randint(5, 600)
            ms = intercept + prefill * prompt + decode * output
            start = now - dt.timedelta(minutes=30) + dt.timedelta(seconds=55 * i)
            start_ns = int(start.timestamp() * 1e9)
            span = tracer.start_span(
                f"chat {model}", kind=SpanKind.CLIENT, start_time=start_ns,
                attributes={
                    A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
                    A.GEN_AI_PROVIDER_NAME: "openai",
                    A.GEN_AI_REQUEST_MODEL: model,
                    A.GEN_AI_RESPONSE_MODEL: model,
                    A.GEN_AI_USAGE_INPUT_TOKENS: prompt,
                    A.GEN_AI_USAGE_OUTPUT_TOKENS: output,
                },
            )
            span.end(end_time=start_ns + int(ms * 1e6))
    provider.shutdown()


def _requests(servers: dict[str, FakeOpenAI]) -> dict[str, int]:
    return {key: len(server.requests) for key, server in servers.items()}


async def _acompletions(router: Any, n: int, messages: list[dict[str, str]], max_tokens: int) -> list[Any]:
    try:
        return [
            await router.acompletion(model=GROUP, messages=messages, max_tokens=max_tokens,
                                     metadata={})
            for _ in range(n)
        ]
    finally:
        await litellm.close_litellm_async_clients()


def test_the_router_sends_each_request_to_the_deployment_tokentrace_ranks_first(
    db: str, servers: dict[str, FakeOpenAI], closing: list[TokentraceRoutingStrategy]
) -> None:
    _store_calls(db)
    router = _router(servers)
    strategy = route_by_expected_latency(router, db)
    closing.append(strategy)

    # A long prompt, a short answer: the fast prefill wins.
    long_p = estimate_prompt_tokens(LONG_PROMPT)
    ranked = expected_latency(db, long_p, 10, ["m-decode", "m-prefill", "m-slow"])
    assert [e.model for e in ranked] == ["m-prefill", "m-decode", "m-slow"]
    assert all(e.trusted for e in ranked)
    asyncio.run(_acompletions(router, 3, LONG_PROMPT, 10))
    assert _requests(servers) == {"m-decode": 0, "m-prefill": 3, "m-slow": 0}
    decision = strategy.last_decision
    assert decision is not None
    assert (decision.reason, decision.model, decision.deployment_id) == ("tokentrace", "m-prefill", "m-prefill")
    assert (decision.model_group, decision.prompt_tokens, decision.output_tokens) == (GROUP, long_p, 10)
    assert decision.expected_ms == pytest.approx(ranked[0].expected_ms)
    assert servers["m-prefill"].requests[-1] == (
        "/v1/chat/completions", {"model": "m-prefill", "messages": LONG_PROMPT, "max_tokens": 10})

    # A short prompt, a long answer: the fast decode wins (the sync path too).
    short_p = estimate_prompt_tokens(SHORT_PROMPT)
    assert expected_latency(db, short_p, 500)[0].model == "m-decode"
    response = router.completion(model=GROUP, messages=SHORT_PROMPT, max_tokens=500)
    assert response.model == "m-decode"
    assert _requests(servers) == {"m-decode": 1, "m-prefill": 3, "m-slow": 0}
    assert strategy.last_decision is not None
    assert strategy.last_decision.to_json() == {
        "model_group": GROUP, "prompt_tokens": short_p, "output_tokens": 500, "reason": "tokentrace",
        "model": "m-decode", "deployment_id": "m-decode",
        "expected_ms": pytest.approx(expected_latency(db, short_p, 500)[0].expected_ms),
    }


def test_the_decision_is_left_in_the_request_metadata_and_the_slow_deployment_is_named_by_model_info(
    db: str, servers: dict[str, FakeOpenAI], closing: list[TokentraceRoutingStrategy]
) -> None:
    _store_calls(db)
    router = _router(servers)
    strategy = TokentraceRoutingStrategy(router, db)
    closing.append(strategy)
    request: dict[str, Any] = {"metadata": {}, "max_tokens": 10}
    picked = strategy.get_available_deployment(GROUP, messages=LONG_PROMPT, request_kwargs=request)
    assert picked["model_info"]["id"] == "m-prefill"
    assert request["metadata"][METADATA_KEY]["reason"] == "tokentrace"
    estimates = strategy.last_decision.estimates if strategy.last_decision else ()
    # the deployment served as "served-slow" was asked about as tokentrace's "m-slow"
    assert {e.model: e.trusted for e in estimates} == {"m-decode": True, "m-prefill": True, "m-slow": True}


def test_with_nothing_known_the_router_shuffles_as_litellm_does(
    db: str, servers: dict[str, FakeOpenAI], closing: list[TokentraceRoutingStrategy]
) -> None:
    router = _router(servers)
    strategy = route_by_expected_latency(router, db)
    closing.append(strategy)
    random.seed(20261207)  # LiteLLM's shuffle draws from the random module
    asyncio.run(_acompletions(router, 12, SHORT_PROMPT, 20))
    counts = _requests(servers)
    assert sum(counts.values()) == 12
    assert sum(1 for c in counts.values() if c > 0) >= 2, counts
    decision = strategy.last_decision
    assert decision is not None and decision.reason == "no trusted estimate"
    assert {e.model: e.reason for e in decision.estimates} == {
        "m-decode": "unseen", "m-prefill": "unseen", "m-slow": "unseen"}


def test_with_the_store_down_requests_still_route_and_the_store_is_not_asked_again_at_once(
    servers: dict[str, FakeOpenAI], caplog: pytest.LogCaptureFixture,
    closing: list[TokentraceRoutingStrategy],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = f"postgresql://tokentrace@127.0.0.1:{port}/tokentrace?connect_timeout=2"
    router = _router(servers)
    strategy = route_by_expected_latency(router, down, retry_after_s=60.0)
    closing.append(strategy)
    with caplog.at_level("WARNING", logger="tokentrace.litellm_router"):
        asyncio.run(_acompletions(router, 1, SHORT_PROMPT, 20))
    assert strategy.last_decision is not None
    assert strategy.last_decision.reason == "store unavailable"
    assert any("routing by LiteLLM's shuffle" in r.getMessage() for r in caplog.records)
    asyncio.run(_acompletions(router, 4, SHORT_PROMPT, 20))
    assert sum(_requests(servers).values()) == 5
    assert strategy.last_decision.reason.startswith("backing off after a failure (next try in ")


def test_an_unknown_model_group_fails_as_it_does_without_the_strategy(
    db: str, servers: dict[str, FakeOpenAI], closing: list[TokentraceRoutingStrategy]
) -> None:
    router = _router(servers)
    with pytest.raises(litellm.BadRequestError, match="There are no healthy deployments") as plain:
        router.completion(model="nope", messages=SHORT_PROMPT)
    closing.append(route_by_expected_latency(router, db))
    with pytest.raises(litellm.BadRequestError, match="There are no healthy deployments") as ours:
        router.completion(model="nope", messages=SHORT_PROMPT)
    assert str(ours.value) == str(plain.value)
    assert _requests(servers) == {"m-decode": 0, "m-prefill": 0, "m-slow": 0}


def test_a_request_tokentrace_refuses_falls_back_without_backing_off(
    db: str, servers: dict[str, FakeOpenAI], closing: list[TokentraceRoutingStrategy]
) -> None:
    _store_calls(db)
    # A model name tokentrace refuses to look up (over 512 characters).
    router = _router(servers, slow_name="x" * 600)
    strategy = TokentraceRoutingStrategy(router, db)
    closing.append(strategy)
    deployments = router.registry().deployments(GROUP)
    for _ in range(2):
        picked = strategy.get_available_deployment(GROUP, messages=SHORT_PROMPT,
                                                    request_kwargs={"max_tokens": 20})
        assert picked in deployments
        assert strategy.last_decision is not None
        assert strategy.last_decision.reason == "tokentrace failed (ExpectedLatencyError)"
