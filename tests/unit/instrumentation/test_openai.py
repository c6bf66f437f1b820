"""The real ``openai`` client, instrumented, against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import wrapt
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.fakeservers import FakeOpenAI, Script
from tests.unit.instrumentation.conftest import Instrument, only_span
from tokentrace import attributes as A
from tokentrace.instrumentation.openai import OpenAIInstrumentor, provider_for

MODEL = "qwen2.5"
MESSAGES = [{"role": "user", "content": "Say hello"}]
USAGE = Script(
    tokens=["Hello", " there", "!"], prompt_eval_count=9, cached_tokens=4, reasoning_tokens=1
)


@pytest.fixture
def server(fake_openai: FakeOpenAI) -> FakeOpenAI:
    fake_openai.scripts[MODEL] = USAGE
    return fake_openai


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=0) as c:
        yield c


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_chat_completion_span(
    instrument: Instrument,
    span_exporter: InMemorySpanExporter,
    client: openai.OpenAI,
    server: FakeOpenAI,
) -> None:
    instrument(OpenAIInstrumentor)
    reply = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0.5,
        max_tokens=32,  # type: ignore[arg-type]
    )

    assert reply.choices[0].message.content == "Hello there!"
    span = only_span(span_exporter, f"chat {MODEL}")
    assert span.kind is SpanKind.CLIENT
    attrs = _attrs(span)
    derived = {k: attrs.pop(k) for k in A.DERIVED_KEYS if k in attrs}
    assert attrs == {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: "openai_compatible",
        A.GEN_AI_REQUEST_MODEL: MODEL,
        A.SERVER_ADDRESS: "127.0.0.1",
        A.SERVER_PORT: server.port,
        A.GEN_AI_REQUEST_TEMPERATURE: 0.5,
        A.GEN_AI_REQUEST_MAX_TOKENS: 32,
        A.GEN_AI_RESPONSE_MODEL: MODEL,
        A.GEN_AI_RESPONSE_ID: "chatcmpl-fake1",
        A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        A.GEN_AI_USAGE_INPUT_TOKENS: 9,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
        A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 4,
        A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 1,
    }
    wall_ms = (span.end_time - span.start_time) / 1e6
    assert derived[A.TT_MS_PER_TOKEN] == pytest.approx(wall_ms / 3)
    assert derived[A.TT_TOKEN_SOURCE] == "reported"
    assert A.TT_DECODE_MS_PER_TOKEN not in derived  # no server timings, no stream


def test_stream_with_usage_chunk(
    instrument: Instrument,
    span_exporter: InMemorySpanExporter,
    client: openai.OpenAI,
    server: FakeOpenAI,
) -> None:
    server.scripts["slow"] = Script(
        tokens=["a", "b", "c", "d"],
        prompt_eval_count=5,
        first_chunk_delay_s=0.03,
        chunk_delay_s=0.02,
    )
    instrument(OpenAIInstrumentor)
    stream = client.chat.completions.create(
        model="slow",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)

    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["a", "b", "c", "d"]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    attrs = _attrs(only_span(span_exporter, "chat slow"))
    assert attrs[A.GEN_AI_REQUEST_STREAM] is True
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == 5
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert attrs[A.TT_TOKEN_SOURCE] == "reported"
    assert attrs[A.TT_STREAM_CHUNKS] == 5  # four with content, then the usage chunk
    assert attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] >= 0.03
    generation_ms = attrs[A.TT_STREAM_GENERATION_MS]
    assert generation_ms >= 4 * 20 * 0.6  # the server paced every later chunk 20 ms apart
    assert attrs[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(generation_ms / 3)
    assert attrs[A.TT_TTFT_MS] == pytest.approx(attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] * 1000)


def test_time_to_first_chunk_counts_from_the_request(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    instrument(OpenAIInstrumentor)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    time.sleep(0.1)  # the caller starts reading late: still part of the wait for the first chunk
    list(stream)

    assert (
        _attrs(only_span(span_exporter, f"chat {MODEL}"))[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
        >= 0.1
    )


def test_stream_without_usage_estimates_output_tokens(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    instrument(OpenAIInstrumentor)
    with client.completions.create(model=MODEL, prompt="Hi", stream=True) as stream:
        texts = [chunk.choices[0].text for chunk in stream]

    assert texts == ["Hello", " there", "!"]
    attrs = _attrs(only_span(span_exporter, f"text_completion {MODEL}"))
    assert attrs[A.GEN_AI_OPERATION_NAME] == "text_completion"
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert attrs[A.TT_TOKEN_SOURCE] == "estimated"
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in attrs
    assert attrs[A.TT_STREAM_CHUNKS] == 3


def test_stream_closed_early_ends_the_span(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    instrument(OpenAIInstrumentor)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    first = next(stream)
    assert span_exporter.get_finished_spans() == ()
    stream.close()

    assert first.choices[0].delta.content == "Hello"
    attrs = _attrs(only_span(span_exporter, f"chat {MODEL}"))
    assert attrs[A.TT_STREAM_CHUNKS] == 1
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 1  # what arrived, estimated
    assert attrs[A.TT_TOKEN_SOURCE] == "estimated"


def test_non_streamed_completion_and_embeddings(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    instrument(OpenAIInstrumentor)
    completion = client.completions.create(model=MODEL, prompt="Hi")
    vectors = client.embeddings.create(model=MODEL, input=["one", "two"])

    assert completion.choices[0].text == "Hello there!" and len(vectors.data) == 2
    text = _attrs(only_span(span_exporter, f"text_completion {MODEL}"))
    assert (text[A.GEN_AI_USAGE_INPUT_TOKENS], text[A.GEN_AI_USAGE_OUTPUT_TOKENS]) == (9, 3)
    assert text[A.GEN_AI_RESPONSE_ID] == "cmpl-fake1"
    embed = _attrs(only_span(span_exporter, f"embeddings {MODEL}"))
    assert embed[A.GEN_AI_OPERATION_NAME] == "embeddings"
    assert embed[A.GEN_AI_USAGE_INPUT_TOKENS] == 9
    assert A.GEN_AI_USAGE_OUTPUT_TOKENS not in embed
    assert embed[A.TT_TOKEN_SOURCE] == "missing"


def test_llamacpp_timings_give_server_decode_and_prefill(
    instrument: Instrument,
    span_exporter: InMemorySpanExporter,
    client: openai.OpenAI,
    server: FakeOpenAI,
) -> None:
    timings = {"prompt_n": 9, "prompt_ms": 4.5, "predicted_n": 3, "predicted_ms": 6.0}
    server.scripts["llama"] = Script(
        tokens=["a", "b", "c"], prompt_eval_count=9, llamacpp_timings=timings
    )
    instrument(OpenAIInstrumentor)
    client.chat.completions.create(model="llama", messages=MESSAGES)  # type: ignore[arg-type]
    list(client.chat.completions.create(model="llama", messages=MESSAGES, stream=True))  # type: ignore[arg-type]

    plain, streamed = (_attrs(s) for s in span_exporter.get_finished_spans())
    for attrs in (plain, streamed):
        assert attrs[A.TT_SERVER_EVAL_NS] == 6_000_000
        assert attrs[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(2.0)
        assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert plain[A.TT_SERVER_PROMPT_EVAL_NS] == 4_500_000
    assert plain[A.TT_PREFILL_MS_PER_TOKEN] == pytest.approx(0.5)
    # Without a usage chunk the count comes from llama.cpp's own `predicted_n`.
    assert A.TT_TOKEN_SOURCE not in streamed or streamed[A.TT_TOKEN_SOURCE] == "reported"


def test_ollama_v1_zero_prompt_tokens_is_a_cached_prompt(
    instrument: Instrument,
    span_exporter: InMemorySpanExporter,
    client: openai.OpenAI,
    server: FakeOpenAI,
) -> None:
    server.scripts["cached"] = Script(tokens=["a"], prompt_eval_count=0)
    instrument(OpenAIInstrumentor)
    client.chat.completions.create(model="cached", messages=MESSAGES)  # type: ignore[arg-type]

    attrs = _attrs(only_span(span_exporter, "chat cached"))
    assert attrs[A.TT_PROMPT_CACHED] is True
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in attrs


def test_not_found_is_recorded_and_reraised_unchanged(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as plain:
        client.chat.completions.create(model="missing", messages=MESSAGES)  # type: ignore[arg-type]
    instrument(OpenAIInstrumentor)
    with pytest.raises(openai.NotFoundError) as traced:
        client.chat.completions.create(model="missing", messages=MESSAGES)  # type: ignore[arg-type]

    assert type(traced.value) is type(plain.value)
    assert (traced.value.status_code, traced.value.body) == (404, plain.value.body)
    assert str(traced.value) == str(plain.value)
    span = only_span(span_exporter, "chat missing")
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)[A.ERROR_TYPE] == "NotFoundError"


def test_async_client(
    instrument: Instrument, span_exporter: InMemorySpanExporter, server: FakeOpenAI
) -> None:
    instrument(OpenAIInstrumentor)

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="k", max_retries=0
        ) as client:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            await client.embeddings.create(model=MODEL, input="one")
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[arg-type]
            )
            async with stream:
                texts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            with pytest.raises(openai.NotFoundError):
                await client.completions.create(model="missing", prompt="x")
            return texts

    assert asyncio.run(run()) == ["Hello", " there", "!"]
    names = sorted(s.name for s in span_exporter.get_finished_spans())
    assert names == [
        f"chat {MODEL}",
        f"chat {MODEL}",
        f"embeddings {MODEL}",
        "text_completion missing",
    ]
    streamed = next(
        _attrs(s)
        for s in span_exporter.get_finished_spans()
        if A.GEN_AI_REQUEST_STREAM in _attrs(s)
    )
    assert (streamed[A.GEN_AI_USAGE_INPUT_TOKENS], streamed[A.GEN_AI_USAGE_OUTPUT_TOKENS]) == (9, 3)
    assert streamed[A.TT_STREAM_CHUNKS] == 4


def test_message_content_only_with_the_opt_in(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    instrument(OpenAIInstrumentor)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert "Say hello" not in json.dumps(_attrs(span_exporter.get_finished_spans()[0]), default=str)
    OpenAIInstrumentor().uninstrument()
    span_exporter.clear()

    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    instrument(OpenAIInstrumentor)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    for span in span_exporter.get_finished_spans():
        attrs = _attrs(span)
        assert json.loads(attrs[A.GEN_AI_INPUT_MESSAGES]) == [
            {"role": "user", "parts": [{"type": "text", "content": "Say hello"}]}
        ]
        assert json.loads(attrs[A.GEN_AI_OUTPUT_MESSAGES]) == [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": "Hello there!"}],
                "finish_reason": "stop",
            }
        ]


def test_uninstrument_restores_the_originals(
    tracer_provider: Any, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    from openai.resources import completions, embeddings
    from openai.resources.chat import completions as chat

    owners = (
        chat.Completions, chat.AsyncCompletions, completions.Completions,
        completions.AsyncCompletions, embeddings.Embeddings, embeddings.AsyncEmbeddings,
    )  # fmt: skip
    originals = [vars(owner)["create"] for owner in owners]
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider)
    assert all(isinstance(vars(owner)["create"], wrapt.FunctionWrapper) for owner in owners)
    OpenAIInstrumentor().uninstrument()

    assert [vars(owner)["create"] for owner in owners] == originals
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert span_exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("api.openai.com", 443, "openai"),
        ("myco.openai.azure.com", 443, "azure.ai.openai"),
        ("api.groq.com", 443, "groq"),
        ("localhost", 11434, "ollama"),
        ("127.0.0.1", 8000, "vllm"),
        ("gpu-box", 8080, "llama.cpp"),
        ("localhost", 1234, "lm_studio"),
        ("gpu-box", 9999, "openai_compatible"),
    ],
)
def test_provider_from_base_url(host: str, port: int, expected: str) -> None:
    assert provider_for(host, port) == expected


def test_provider_overrides(
    instrument: Instrument,
    span_exporter: InMemorySpanExporter,
    client: openai.OpenAI,
    server: FakeOpenAI,
) -> None:
    assert provider_for("gpu-box", 9000, (("gpu-box:9000", "sglang"),)) == "sglang"
    assert provider_for("api.openai.com", 443, (("api.openai.com", "proxy"),)) == "proxy"
    instrument(OpenAIInstrumentor, providers={f"127.0.0.1:{server.port}": "vllm"})
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert _attrs(only_span(span_exporter, f"chat {MODEL}"))[A.GEN_AI_PROVIDER_NAME] == "vllm"


def test_raw_response_is_returned_untouched(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    instrument(OpenAIInstrumentor)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]

    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content == "Hello there!"
    span = only_span(span_exporter, f"chat {MODEL}")
    assert span.status.status_code is StatusCode.UNSET


def test_server_attributes_follow_a_changed_base_url(
    instrument: Instrument,
    span_exporter: InMemorySpanExporter,
    client: openai.OpenAI,
    server: FakeOpenAI,
) -> None:
    # Server attributes are computed once per base URL object: a client pointed
    # elsewhere (a new URL object) must be described anew.
    instrument(OpenAIInstrumentor)
    with FakeOpenAI({MODEL: USAGE}) as other:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        client.base_url = f"{other.url}/v1"  # type: ignore[assignment]
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]

    ports = [s.attributes[A.SERVER_PORT] for s in span_exporter.get_finished_spans()]  # type: ignore[index]
    assert ports == [server.port, other.port]


def test_nested_spans_are_children_of_the_call_span(
    instrument: Instrument,
    span_exporter: InMemorySpanExporter,
    client: openai.OpenAI,
    tracer_provider: Any,
) -> None:
    # The call's span is current while the library runs (an HTTP client's own
    # instrumentation nests under it), and the caller's context is its parent.
    tracer = tracer_provider.get_tracer("test")
    instrument(OpenAIInstrumentor)
    seen: list[Any] = []
    send = client._client.send

    def send_and_look(*args: Any, **kwargs: Any) -> Any:
        seen.append(trace.get_current_span())
        return send(*args, **kwargs)

    client._client.send = send_and_look  # type: ignore[method-assign]
    with tracer.start_as_current_span("caller") as caller:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert trace.get_current_span() is not caller

    call = only_span(span_exporter, f"chat {MODEL}")
    assert call.parent is not None and call.parent.span_id == caller.get_span_context().span_id
    assert [s.get_span_context().span_id for s in seen] == [call.context.span_id]


def test_request_options_are_recorded_only_when_given(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: openai.OpenAI
) -> None:
    instrument(OpenAIInstrumentor)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=16,
    )

    plain, limited = (_attrs(s) for s in span_exporter.get_finished_spans())
    assert A.GEN_AI_REQUEST_TEMPERATURE not in plain
    assert A.GEN_AI_REQUEST_MAX_TOKENS not in plain
    assert A.GEN_AI_REQUEST_TEMPERATURE not in limited
    assert limited[A.GEN_AI_REQUEST_MAX_TOKENS] == 16
