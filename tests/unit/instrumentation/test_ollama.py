"""The real ``ollama`` client, instrumented, against a local server that answers like Ollama."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from typing import Any

import httpx
import ollama
import pytest
import wrapt
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.fakeservers import FakeOllama, Script
from tests.unit.instrumentation.conftest import Instrument, only_span
from tokentrace import attributes as A
from tokentrace.instrumentation import _metrics as M
from tokentrace.instrumentation.ollama import DEFAULT_MIN_LOAD_MS, OllamaInstrumentor

MODEL = "llama3.2"
MS = 1_000_000
# Server timings as Ollama reports them (ns): 1.5 ms load, 7 prompt tokens in 2.1 ms,
# 3 output tokens in 4.5 ms -> prefill 0.3 ms/token, decode 1.5 ms/token.
TIMED = Script(
    tokens=["Hello", " there", "!"],
    load_ns=1_500_000,
    prompt_eval_count=7,
    prompt_eval_ns=2_100_000,
    eval_ns=4_500_000,
    total_ns=9_000_000,
)
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def server(fake_ollama: FakeOllama) -> FakeOllama:
    fake_ollama.scripts[MODEL] = TIMED
    return fake_ollama


@pytest.fixture
def client(server: FakeOllama) -> Any:
    with ollama.Client(host=server.url) as c:
        yield c


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_chat_span_has_usage_server_timings_and_derived_figures(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any, server: FakeOllama
) -> None:
    instrument(OllamaInstrumentor)
    reply = client.chat(
        model=MODEL, messages=MESSAGES, options={"temperature": 0.2, "num_predict": 64}
    )

    assert reply.message.content == "Hello there!"
    span = only_span(span_exporter, f"chat {MODEL}")
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attrs = _attrs(span)
    derived = {k: attrs.pop(k) for k in A.DERIVED_KEYS if k in attrs}
    assert attrs == {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: "ollama",
        A.GEN_AI_REQUEST_MODEL: MODEL,
        A.SERVER_ADDRESS: "127.0.0.1",
        A.SERVER_PORT: server.port,
        A.GEN_AI_REQUEST_TEMPERATURE: 0.2,
        A.GEN_AI_REQUEST_MAX_TOKENS: 64,
        A.GEN_AI_RESPONSE_MODEL: MODEL,
        A.GEN_AI_USAGE_INPUT_TOKENS: 7,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
        A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        A.TT_SERVER_LOAD_NS: 1_500_000,
        A.TT_SERVER_PROMPT_EVAL_NS: 2_100_000,
        A.TT_SERVER_EVAL_NS: 4_500_000,
        A.TT_SERVER_TOTAL_NS: 9_000_000,
    }
    assert derived[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(1.5)
    assert derived[A.TT_PREFILL_MS_PER_TOKEN] == pytest.approx(0.3)
    assert derived[A.TT_LOAD_MS] == pytest.approx(1.5)
    assert derived[A.TT_TOKEN_SOURCE] == "reported"
    wall_ms = (span.end_time - span.start_time) / MS
    assert derived[A.TT_INFERENCE_MS] == pytest.approx(max(wall_ms - 1.5, 0.0))
    assert derived[A.TT_MS_PER_TOKEN] == pytest.approx(derived[A.TT_INFERENCE_MS] / 3)


def test_with_min_load_ms_0_every_reported_load_is_a_child_span_at_the_start_of_the_call(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any, server: FakeOllama
) -> None:
    instrument(OllamaInstrumentor, min_load_ms=0)
    client.generate(model=MODEL, prompt="Hi")

    call = only_span(span_exporter, f"text_completion {MODEL}")
    load = only_span(span_exporter, f"load_model {MODEL}")
    assert load.parent is not None and load.parent.span_id == call.context.span_id
    assert load.context.trace_id == call.context.trace_id
    assert load.kind is SpanKind.INTERNAL
    assert load.start_time == call.start_time
    assert load.end_time - load.start_time == 1_500_000
    assert _attrs(load) == {
        A.GEN_AI_OPERATION_NAME: "load_model",
        A.GEN_AI_PROVIDER_NAME: "ollama",
        A.GEN_AI_REQUEST_MODEL: MODEL,
        A.SERVER_ADDRESS: "127.0.0.1",
        A.SERVER_PORT: server.port,
        A.TT_LOAD_SOURCE: "server",
        A.TT_SERVER_LOAD_NS: 1_500_000,
        A.TT_LOAD_MS: 1.5,
    }


def test_by_default_a_real_load_is_a_child_span_and_a_warm_call_s_is_not(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any, server: FakeOllama
) -> None:
    # A warm Ollama reports a few ms of load_duration (TIMED: 1.5 ms); a real load
    # starts a runner and reads the weights. The default threshold is 100 ms, inclusive.
    assert DEFAULT_MIN_LOAD_MS == 100.0
    server.scripts["cold"] = dataclasses.replace(TIMED, load_ns=850 * MS)
    server.scripts["edge"] = dataclasses.replace(TIMED, load_ns=100 * MS)
    server.scripts["below"] = dataclasses.replace(TIMED, load_ns=100 * MS - 1)
    instrument(OllamaInstrumentor)
    for model in (MODEL, "cold", "edge", "below"):
        client.generate(model=model, prompt="Hi")

    names = sorted(s.name for s in span_exporter.get_finished_spans())
    assert names == [
        "load_model cold",
        "load_model edge",
        "text_completion below",
        "text_completion cold",
        "text_completion edge",
        f"text_completion {MODEL}",
    ]
    # The warm call's reported load stays on its span (ms/token still excludes it).
    warm = _attrs(only_span(span_exporter, f"text_completion {MODEL}"))
    assert warm[A.TT_SERVER_LOAD_NS] == 1_500_000
    assert warm[A.TT_LOAD_MS] == pytest.approx(1.5)
    below = _attrs(only_span(span_exporter, "text_completion below"))
    assert below[A.TT_SERVER_LOAD_NS] == 100 * MS - 1

    call = only_span(span_exporter, "text_completion cold")
    load = only_span(span_exporter, "load_model cold")
    assert load.parent is not None and load.parent.span_id == call.context.span_id
    assert load.kind is SpanKind.INTERNAL
    assert load.start_time == call.start_time
    assert load.end_time - load.start_time == 850 * MS
    assert _attrs(load) == {
        A.GEN_AI_OPERATION_NAME: "load_model",
        A.GEN_AI_PROVIDER_NAME: "ollama",
        A.GEN_AI_REQUEST_MODEL: "cold",
        A.SERVER_ADDRESS: "127.0.0.1",
        A.SERVER_PORT: server.port,
        A.TT_LOAD_SOURCE: "server",
        A.TT_SERVER_LOAD_NS: 850 * MS,
        A.TT_LOAD_MS: 850.0,
    }
    assert _attrs(call)[A.TT_SERVER_LOAD_NS] == 850 * MS
    edge = only_span(span_exporter, "load_model edge")
    assert edge.end_time - edge.start_time == 100 * MS


def test_omitted_timings_record_nothing_and_make_no_load_span(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any, server: FakeOllama
) -> None:
    server.scripts["warm"] = Script(tokens=["a", "b"], prompt_eval_count=4, eval_ns=1_000_000)
    instrument(OllamaInstrumentor)
    client.generate(model="warm", prompt="Hi")

    assert [s.name for s in span_exporter.get_finished_spans()] == ["text_completion warm"]
    attrs = _attrs(only_span(span_exporter, "text_completion warm"))
    assert A.TT_SERVER_LOAD_NS not in attrs
    assert A.TT_SERVER_PROMPT_EVAL_NS not in attrs
    assert A.TT_SERVER_TOTAL_NS not in attrs
    assert A.TT_LOAD_MS not in attrs
    assert A.TT_PREFILL_MS_PER_TOKEN not in attrs
    assert attrs[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(0.5)


def test_min_load_ms_skips_small_loads_but_keeps_the_reported_figure(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    instrument(OllamaInstrumentor, min_load_ms=2)
    client.generate(model=MODEL, prompt="Hi")

    assert [s.name for s in span_exporter.get_finished_spans()] == [f"text_completion {MODEL}"]
    assert _attrs(span_exporter.get_finished_spans()[0])[A.TT_SERVER_LOAD_NS] == 1_500_000


def test_cached_prompt_is_marked_not_counted_as_zero(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any, server: FakeOllama
) -> None:
    server.scripts["cached"] = Script(tokens=["x", "y"], prompt_eval_count=None, eval_ns=2_000_000)
    instrument(OllamaInstrumentor)
    client.chat(model="cached", messages=MESSAGES)

    attrs = _attrs(only_span(span_exporter, "chat cached"))
    assert attrs[A.TT_PROMPT_CACHED] is True
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in attrs
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2


def test_stream_span_covers_the_iteration_and_measures_from_the_request(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any, server: FakeOllama
) -> None:
    server.scripts["slow"] = Script(
        tokens=["a", "b", "c", "d"], first_chunk_delay_s=0.05, chunk_delay_s=0.02,
        prompt_eval_count=5, prompt_eval_ns=1_000_000, eval_ns=8_000_000,
    )  # fmt: skip
    instrument(OllamaInstrumentor)
    stream = client.chat(model="slow", messages=MESSAGES, stream=True)
    time.sleep(0.2)  # ollama-python sends nothing until iteration starts
    assert span_exporter.get_finished_spans() == ()
    before = time.time_ns()
    parts = [part.message.content for part in stream]
    after = time.time_ns()

    assert parts == ["a", "b", "c", "d", ""]
    span = only_span(span_exporter, "chat slow")
    assert before <= span.start_time and span.end_time <= after
    attrs = _attrs(span)
    assert attrs[A.GEN_AI_REQUEST_STREAM] is True
    assert 0.05 <= attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] < 0.2
    assert attrs[A.TT_STREAM_CHUNKS] == 5
    assert attrs[A.TT_STREAM_GENERATION_MS] >= 4 * 20 * 0.6  # four more chunks, 20 ms apart
    assert attrs[A.TT_TTFT_MS] == pytest.approx(attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] * 1000)
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == 5
    assert attrs[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(2.0)  # the server's, not the stream's
    assert attrs[A.TT_PREFILL_MS_PER_TOKEN] == pytest.approx(0.2)


def test_stream_left_early_still_ends_its_span(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    instrument(OllamaInstrumentor)
    stream = client.generate(model=MODEL, prompt="Hi", stream=True)
    first = next(stream)
    stream.close()

    assert first.response == "Hello"
    attrs = _attrs(only_span(span_exporter, f"text_completion {MODEL}"))
    assert attrs[A.TT_STREAM_CHUNKS] == 1
    assert A.GEN_AI_USAGE_OUTPUT_TOKENS not in attrs  # the final chunk never came


def test_embed_and_legacy_embeddings(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    instrument(OllamaInstrumentor)
    embedded = client.embed(model=MODEL, input=["one", "two"])
    legacy = client.embeddings(model=MODEL, prompt="one")

    assert len(embedded.embeddings) == 2 and len(legacy.embedding) == 4
    new, old = [s for s in span_exporter.get_finished_spans() if s.name == f"embeddings {MODEL}"]
    assert _attrs(new)[A.GEN_AI_USAGE_INPUT_TOKENS] == 7
    assert _attrs(new)[A.GEN_AI_OPERATION_NAME] == "embeddings"
    assert A.GEN_AI_USAGE_OUTPUT_TOKENS not in _attrs(new)
    assert A.TT_PROMPT_CACHED not in _attrs(new)
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in _attrs(old)  # the legacy API reports no usage
    assert A.TT_PROMPT_CACHED not in _attrs(old)


def test_unknown_model_error_is_recorded_and_reraised_unchanged(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    with pytest.raises(ollama.ResponseError) as plain:
        client.chat(model="missing", messages=MESSAGES)
    instrument(OllamaInstrumentor)
    with pytest.raises(ollama.ResponseError) as traced:
        client.chat(model="missing", messages=MESSAGES)
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.chat(model="missing", messages=MESSAGES, stream=True))

    assert (traced.value.status_code, str(traced.value)) == (404, str(plain.value))
    assert streamed.value.status_code == 404
    assert traced.value.__traceback__ is not None
    for span in span_exporter.get_finished_spans():
        assert span.name == "chat missing"
        assert span.status.status_code is StatusCode.ERROR
        assert _attrs(span)[A.ERROR_TYPE] == "ResponseError"
    assert len(span_exporter.get_finished_spans()) == 2


def test_connection_error_is_reraised_unchanged(
    instrument: Instrument, span_exporter: InMemorySpanExporter
) -> None:
    instrument(OllamaInstrumentor)
    with ollama.Client(host="http://127.0.0.1:9") as dead, pytest.raises(ConnectionError):
        dead.chat(model=MODEL, messages=MESSAGES)
    assert _attrs(only_span(span_exporter, f"chat {MODEL}"))[A.ERROR_TYPE] == "ConnectionError"


def test_async_client_plain_and_streamed(
    instrument: Instrument, span_exporter: InMemorySpanExporter, server: FakeOllama
) -> None:
    instrument(OllamaInstrumentor, min_load_ms=0)  # every reported load a span

    async def run() -> list[str]:
        client = ollama.AsyncClient(host=server.url)
        try:
            await client.chat(model=MODEL, messages=MESSAGES)
            stream = await client.generate(model=MODEL, prompt="Hi", stream=True)
            return [part.response async for part in stream]
        finally:
            await client.close()

    assert asyncio.run(run()) == ["Hello", " there", "!", ""]
    chat = _attrs(only_span(span_exporter, f"chat {MODEL}"))
    streamed = _attrs(only_span(span_exporter, f"text_completion {MODEL}"))
    assert chat[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 3 and A.GEN_AI_REQUEST_STREAM not in chat
    assert streamed[A.GEN_AI_REQUEST_STREAM] is True
    assert streamed[A.TT_STREAM_CHUNKS] == 4
    assert streamed[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(1.5)
    assert (
        len([s for s in span_exporter.get_finished_spans() if s.name == f"load_model {MODEL}"]) == 2
    )


def test_module_level_functions_are_traced(
    instrument: Instrument, span_exporter: InMemorySpanExporter, server: FakeOllama,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # ollama.chat is a method of a default Client bound at import time.
    with httpx.Client(base_url=server.url) as http:
        monkeypatch.setattr(ollama._client, "_client", http)  # type: ignore[attr-defined]
        instrument(OllamaInstrumentor)
        ollama.chat(model=MODEL, messages=MESSAGES)
    assert only_span(span_exporter, f"chat {MODEL}").attributes[A.SERVER_PORT] == server.port  # type: ignore[index]


def test_message_content_only_with_the_opt_in(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    instrument(OllamaInstrumentor)
    client.chat(model=MODEL, messages=MESSAGES)
    list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
    OllamaInstrumentor().uninstrument()
    for span in span_exporter.get_finished_spans():
        assert A.GEN_AI_INPUT_MESSAGES not in _attrs(span)
        assert A.GEN_AI_OUTPUT_MESSAGES not in _attrs(span)
        assert "Say hello" not in json.dumps(_attrs(span), default=str)
    span_exporter.clear()

    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    instrument(OllamaInstrumentor)
    client.chat(model=MODEL, messages=MESSAGES)
    list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
    for span in [s for s in span_exporter.get_finished_spans() if s.name == f"chat {MODEL}"]:
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


def test_suppressed_instrumentation_records_nothing(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    instrument(OllamaInstrumentor)
    with suppress_instrumentation():
        client.chat(model=MODEL, messages=MESSAGES)
    assert span_exporter.get_finished_spans() == ()


def test_uninstrument_restores_the_originals(
    tracer_provider: Any, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    originals = (vars(ollama.Client)["_request"], vars(ollama.AsyncClient)["_request"])
    instrumentor = OllamaInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    assert isinstance(vars(ollama.Client)["_request"], wrapt.FunctionWrapper)
    OllamaInstrumentor().uninstrument()  # the instrumentor is a singleton

    assert (vars(ollama.Client)["_request"], vars(ollama.AsyncClient)["_request"]) == originals
    client.chat(model=MODEL, messages=MESSAGES)
    assert span_exporter.get_finished_spans() == ()


def test_metrics_use_the_conventions_buckets(
    instrument: Instrument, metric_reader: InMemoryMetricReader, client: Any
) -> None:
    instrument(OllamaInstrumentor)
    client.chat(model=MODEL, messages=MESSAGES)
    list(client.chat(model=MODEL, messages=MESSAGES, stream=True))

    points: dict[str, list[HistogramDataPoint]] = {}
    data = metric_reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)  # type: ignore[arg-type]
    usage = {p.attributes[A.GEN_AI_TOKEN_TYPE]: p for p in points[M.TOKEN_USAGE]}  # type: ignore[index]
    assert (usage["input"].sum, usage["output"].sum) == (14, 6)
    assert usage["input"].explicit_bounds == M.TOKEN_BUCKETS
    assert points[M.OPERATION_DURATION][0].explicit_bounds == M.DURATION_BUCKETS
    assert points[M.OPERATION_DURATION][0].count == 2
    assert points[M.OPERATION_DURATION][0].attributes[A.GEN_AI_RESPONSE_MODEL] == MODEL  # type: ignore[index]
    tpot = points[M.TIME_PER_OUTPUT_TOKEN][0]
    assert tpot.explicit_bounds == M.TIME_PER_OUTPUT_TOKEN_BUCKETS
    assert tpot.sum == pytest.approx(2 * 0.0015)  # the server's decode time per token
    ttft = points[M.TIME_TO_FIRST_TOKEN][0]
    assert ttft.explicit_bounds == M.TIME_TO_FIRST_TOKEN_BUCKETS and ttft.count == 1


def test_instrumenting_does_not_import_ollama() -> None:
    # A fresh interpreter: the library is patched when the application imports it.
    code = (
        "import sys, wrapt\n"
        "from tokentrace.instrumentation.ollama import OllamaInstrumentor\n"
        "OllamaInstrumentor().instrument()\n"
        "assert 'ollama' not in sys.modules\n"
        "import ollama\n"
        "assert isinstance(vars(ollama.Client)['_request'], wrapt.FunctionWrapper)\n"
        "assert isinstance(vars(ollama.AsyncClient)['_request'], wrapt.FunctionWrapper)\n"
        "OllamaInstrumentor().uninstrument()\n"
        "assert not isinstance(vars(ollama.Client)['_request'], wrapt.FunctionWrapper)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def test_async_stream_left_early_still_ends_its_span(
    instrument: Instrument, span_exporter: InMemorySpanExporter, server: FakeOllama
) -> None:
    instrument(OllamaInstrumentor)

    async def run() -> str:
        client = ollama.AsyncClient(host=server.url)
        try:
            stream = await client.chat(model=MODEL, messages=MESSAGES, stream=True)
            async for part in stream:
                await stream.aclose()
                return str(part.message.content)
            return ""
        finally:
            await client.close()

    assert asyncio.run(run()) == "Hello"
    attrs = _attrs(only_span(span_exporter, f"chat {MODEL}"))
    assert attrs[A.TT_STREAM_CHUNKS] == 1
    assert A.GEN_AI_USAGE_OUTPUT_TOKENS not in attrs


@pytest.mark.parametrize(
    ("keep_alive", "seconds"),
    [("10m", 600.0), (90, 90.0), ("1h30m", 5400.0), (-1, -1.0), ("-5m", -1.0), ("0", 0.0), (0, 0.0)],
)
def test_the_requested_keep_alive_is_recorded_in_seconds_without_content_capture(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any, server: FakeOllama,
    keep_alive: Any, seconds: float,
) -> None:  # fmt: skip
    instrument(OllamaInstrumentor)
    client.chat(model=MODEL, messages=MESSAGES, keep_alive=keep_alive)
    list(client.generate(model=MODEL, prompt="Hi", keep_alive=keep_alive, stream=True))

    assert [r[1].get("keep_alive") for r in server.requests] == [keep_alive, keep_alive]
    assert _attrs(only_span(span_exporter, f"chat {MODEL}"))[A.TT_REQUEST_KEEP_ALIVE_S] == seconds
    streamed = _attrs(only_span(span_exporter, f"text_completion {MODEL}"))
    assert streamed[A.TT_REQUEST_KEEP_ALIVE_S] == seconds
    assert A.GEN_AI_INPUT_MESSAGES not in streamed


def test_no_keep_alive_asked_none_recorded(
    instrument: Instrument, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    instrument(OllamaInstrumentor)
    client.chat(model=MODEL, messages=MESSAGES)
    assert A.TT_REQUEST_KEEP_ALIVE_S not in _attrs(only_span(span_exporter, f"chat {MODEL}"))
