"""One model call, one span, with OpenLLMetry's instrumentors installed beside tokentrace's.

The real ``opentelemetry-instrumentation-ollama`` and ``-openai`` (OpenLLMetry, the
versions pinned in the ``test`` extra) and tokentrace's are instrumented in both
orders on one real SDK pipeline (tokentrace's processor into an in-memory
exporter), and the real ``ollama`` and ``openai`` clients call the stand-in
servers. Also: spans of the same call made above tokentrace by others (as
OpenLLMetry's LangChain handler makes them, key included), and spans that are not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import ollama
import openai
import pytest
import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.ollama import OllamaInstrumentor as OpenLLMetryOllama
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv_ai import SUPPRESS_LANGUAGE_MODEL_INSTRUMENTATION_KEY
from opentelemetry.trace import SpanKind, StatusCode

from tests.fakeservers import FakeOllama, FakeOpenAI, Script
from tokentrace import attributes as A
from tokentrace.instrumentation.patching import BaseInstrumentor
from tokentrace.instrumentation.suppression import LM_SUPPRESS_KEY, SUPPRESSED_BY_US
from tokentrace.instrumentation.ollama import OllamaInstrumentor
from tokentrace.instrumentation.openai import OpenAIInstrumentor

with warnings.catch_warnings():
    # OpenLLMetry's OpenAI package declares a pydantic model the v1 way (a deprecation
    # warning at import, which the suite makes an error): imported here, once.
    warnings.simplefilter("ignore", DeprecationWarning)
    import opentelemetry.instrumentation.openai.v1  # noqa: F401
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetryOpenAI

MODEL = "llama3.2"
QWEN = "qwen2.5"
MS = 1_000_000
# As in test_ollama: 7 prompt tokens in 2.1 ms, 3 output tokens in 4.5 ms.
TIMED = Script(
    tokens=["Hello", " there", "!"],
    load_ns=1_500_000,
    prompt_eval_count=7,
    prompt_eval_ns=2_100_000,
    eval_ns=4_500_000,
    total_ns=9_000_000,
)
# llama-server's timings on its OpenAI-compatible answers: the same 1.5 ms/token decode.
LLAMACPP = dataclasses.replace(
    TIMED, llamacpp_timings={"prompt_n": 7, "prompt_ms": 2.1, "predicted_n": 3, "predicted_ms": 4.5}
)
MESSAGES = [{"role": "user", "content": "Say hello"}]

OURS_FIRST = "tokentrace instrumented first"
THEIRS_FIRST = "OpenLLMetry instrumented first"
ORDERS = (OURS_FIRST, THEIRS_FIRST)

OLLAMA_SCOPE = "tokentrace.instrumentation.ollama"
OPENAI_SCOPE = "tokentrace.instrumentation.openai"
OPENLLMETRY_OLLAMA_SCOPE = "opentelemetry.instrumentation.ollama"
OPENLLMETRY_OPENAI_SCOPE = "opentelemetry.instrumentation.openai.v1"


def test_the_suppression_key_is_openllmetrys() -> None:
    assert LM_SUPPRESS_KEY == SUPPRESS_LANGUAGE_MODEL_INSTRUMENTATION_KEY
    assert LM_SUPPRESS_KEY == "suppress_language_model_instrumentation"


# --- fixtures ----------------------------------------------------------------------


Instrumentors = Callable[[str, type[BaseInstrumentor], type[BaseInstrumentor]], None]


def _take_off_openllmetrys_wrappers() -> None:
    """Unwrap what OpenLLMetry's instrumentors leave wrapped once uninstrumented.

    Its Ollama instrumentor's ``_uninstrument`` unwraps methods it never wrapped
    (``Client.chat`` …, not ``Client._request``), and its OpenAI one passes
    ``unwrap("openai.resources.chat.completions", "Completions.create")``, which the
    contrib ``unwrap`` reads as attribute ``"Completions.create"`` of module
    ``openai.resources.chat.completions``: nothing is unwrapped. Each of its
    wrappers still in a chain is taken out here, wherever it is.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("ollama", "openai")):
            continue
        owners: list[Any] = [module]
        owners += [v for v in vars(module).values() if isinstance(v, type)]
        for owner in owners:
            for attr, value in list(vars(owner).items()):
                parent: Any = None
                node: Any = value
                while isinstance(node, wrapt.FunctionWrapper):
                    inner = node.__wrapped__
                    origin = getattr(node._self_wrapper, "__module__", "")
                    if origin.startswith("opentelemetry.instrumentation."):
                        if parent is None:
                            setattr(owner, attr, inner)
                        else:
                            setattr(parent, "__wrapped__", inner)  # noqa: B010
                    else:
                        parent = node
                    node = inner


@pytest.fixture
def both(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Iterator[Instrumentors]:
    """``both(order, ours, theirs)``: instrument the two in ``order``, until the test ends.

    Undone in reverse order, then OpenLLMetry's wrappers, which its uninstrument
    leaves in place, are taken off by hand.
    """
    used: list[BaseInstrumentor] = []

    def _both(order: str, ours: type[BaseInstrumentor], theirs: type[BaseInstrumentor]) -> None:
        for cls in (ours, theirs) if order == OURS_FIRST else (theirs, ours):
            instrumentor = cls()
            instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
            used.append(instrumentor)

    yield _both
    for instrumentor in reversed(used):
        instrumentor.uninstrument()
    _take_off_openllmetrys_wrappers()
    for owner in (ollama.Client, ollama.AsyncClient):
        assert not isinstance(vars(owner)["_request"], wrapt.FunctionWrapper)
    for module in (openai.resources.chat.completions, openai.resources.completions):
        for cls in (module.Completions, module.AsyncCompletions):
            assert not isinstance(vars(cls)["create"], wrapt.FunctionWrapper)


@pytest.fixture
def ollama_server(fake_ollama: FakeOllama) -> FakeOllama:
    fake_ollama.scripts[MODEL] = TIMED
    return fake_ollama


@pytest.fixture
def client(ollama_server: FakeOllama) -> Iterator[Any]:
    with ollama.Client(host=ollama_server.url) as c:
        yield c


@pytest.fixture
def oa(fake_openai: FakeOpenAI) -> Iterator[Any]:
    fake_openai.scripts[QWEN] = LLAMACPP
    with openai.OpenAI(base_url=f"{fake_openai.url}/v1", api_key="k", max_retries=0) as c:
        yield c


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _only(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [(s.name, s.instrumentation_scope) for s in spans]
    return spans[0]


def _derived(attrs: dict[str, Any]) -> dict[str, Any]:
    """Take the processor's figures out of ``attrs``; return them."""
    return {key: attrs.pop(key) for key in A.DERIVED_KEYS if key in attrs}


def _recorded_calls(reader: InMemoryMetricReader) -> dict[str, int]:
    """Per instrumentation scope: how many operations its duration histogram counted."""
    counts: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "gen_ai.client.operation.duration":
                    points = metric.data.data_points
                    total = sum(p.count for p in points)  # type: ignore[union-attr]
                    counts[scope.scope.name] = counts.get(scope.scope.name, 0) + total
    return {name: count for name, count in counts.items() if count}


def _timed_ollama_attrs(port: int, stream: bool = False) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: "ollama",
        A.GEN_AI_REQUEST_MODEL: MODEL,
        A.SERVER_ADDRESS: "127.0.0.1",
        A.SERVER_PORT: port,
        A.GEN_AI_RESPONSE_MODEL: MODEL,
        A.GEN_AI_USAGE_INPUT_TOKENS: 7,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
        A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        A.TT_SERVER_LOAD_NS: 1_500_000,
        A.TT_SERVER_PROMPT_EVAL_NS: 2_100_000,
        A.TT_SERVER_EVAL_NS: 4_500_000,
        A.TT_SERVER_TOTAL_NS: 9_000_000,
    }
    if stream:
        attrs[A.GEN_AI_REQUEST_STREAM] = True
    return attrs


def _pop_stream_timing(attrs: dict[str, Any], chunks: int) -> None:
    assert attrs.pop(A.TT_STREAM_CHUNKS) == chunks
    assert attrs.pop(A.TT_STREAM_GENERATION_MS) >= 0
    assert attrs.pop(A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK) > 0


def _assert_timed_figures(derived: dict[str, Any], stream: bool) -> None:
    assert derived[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(1.5)
    assert derived[A.TT_PREFILL_MS_PER_TOKEN] == pytest.approx(0.3)
    assert derived[A.TT_TOKEN_SOURCE] == "reported"
    assert derived[A.TT_MS_PER_TOKEN] == pytest.approx(derived[A.TT_INFERENCE_MS] / 3)
    assert (A.TT_TTFT_MS in derived) is stream


# --- Ollama: tokentrace's wrapper stays on top, OpenLLMetry's skips the call ----------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_ollama_call_is_one_span_in_either_order(
    both: Instrumentors,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    client: Any,
    ollama_server: FakeOllama,
    order: str,
    stream: bool,
) -> None:
    both(order, OllamaInstrumentor, OpenLLMetryOllama)
    if stream:
        parts = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
        assert "".join(p.message.content for p in parts) == "Hello there!"
    else:
        assert client.chat(model=MODEL, messages=MESSAGES).message.content == "Hello there!"

    span = _only(span_exporter)  # no "ollama.chat" span beside it
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == OLLAMA_SCOPE
    attrs = _attrs(span)
    derived = _derived(attrs)
    if stream:
        _pop_stream_timing(attrs, chunks=4)
    assert attrs == _timed_ollama_attrs(ollama_server.port, stream)
    _assert_timed_figures(derived, stream)
    # Counted once in the metrics too: OpenLLMetry's wrapper recorded nothing.
    assert _recorded_calls(metric_reader) == {OLLAMA_SCOPE: 1}


@pytest.mark.parametrize("order", ORDERS)
def test_async_ollama_call_is_one_span_in_either_order(
    both: Instrumentors, span_exporter: InMemorySpanExporter, ollama_server: FakeOllama, order: str
) -> None:
    both(order, OllamaInstrumentor, OpenLLMetryOllama)

    async def calls() -> None:
        aclient = ollama.AsyncClient(host=ollama_server.url)
        try:
            await aclient.chat(model=MODEL, messages=MESSAGES)
            async for _ in await aclient.chat(model=MODEL, messages=MESSAGES, stream=True):
                pass
        finally:
            await aclient.close()

    asyncio.run(calls())
    spans = span_exporter.get_finished_spans()
    assert [(s.name, s.instrumentation_scope.name) for s in spans] == [  # type: ignore[union-attr]
        (f"chat {MODEL}", OLLAMA_SCOPE),
        (f"chat {MODEL}", OLLAMA_SCOPE),
    ]
    for span in spans:
        assert _attrs(span)[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(1.5)


def test_ollama_wrapper_is_put_back_on_top_and_taken_off_alone(
    both: Instrumentors, span_exporter: InMemorySpanExporter, client: Any
) -> None:
    both(OURS_FIRST, OllamaInstrumentor, OpenLLMetryOllama)
    top = vars(ollama.Client)["_request"]
    assert isinstance(top, wrapt.FunctionWrapper)
    assert top._self_wrapper.__module__ == "tokentrace.instrumentation.ollama"
    # Below it: OpenLLMetry's wrapper, then the original (tokentrace's is not twice).
    below = top.__wrapped__
    assert below._self_wrapper.__module__ == "opentelemetry.instrumentation.ollama"
    assert not isinstance(below.__wrapped__, wrapt.FunctionWrapper)

    OllamaInstrumentor().uninstrument()
    client.chat(model=MODEL, messages=MESSAGES)
    span = _only(span_exporter)  # OpenLLMetry's, as if tokentrace had never been there
    assert span.name == "ollama.chat"
    assert vars(ollama.Client)["_request"] is below


# --- OpenAI: whichever wraps last runs first; tokentrace lends or suppresses ----------


def _openllmetry_chat_attrs(oa: Any, stream: bool) -> dict[str, Any]:
    """What OpenLLMetry 0.62.4's own span of the call says (content on by default)."""
    return {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: "openai",
        A.GEN_AI_REQUEST_MODEL: QWEN,
        A.GEN_AI_IS_STREAMING: stream,
        "gen_ai.openai.api_base": f"{oa.base_url}",
        A.GEN_AI_INPUT_MESSAGES: json.dumps(
            [{"role": "user", "parts": [{"content": "Say hello", "type": "text"}]}]
        ),
        A.GEN_AI_RESPONSE_MODEL: QWEN,
        A.GEN_AI_RESPONSE_ID: "chatcmpl-fake1",
        A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        A.GEN_AI_USAGE_TOTAL_TOKENS: 10,
        A.GEN_AI_USAGE_INPUT_TOKENS: 7,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
        A.GEN_AI_OUTPUT_MESSAGES: json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [{"content": "Hello there!", "type": "text"}],
                    "finish_reason": "stop",
                }
            ]
        ),
    }


def _tokentrace_chat_attrs(port: int, stream: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: "openai_compatible",
        A.GEN_AI_REQUEST_MODEL: QWEN,
        A.SERVER_ADDRESS: "127.0.0.1",
        A.SERVER_PORT: port,
        A.GEN_AI_RESPONSE_MODEL: QWEN,
        A.GEN_AI_USAGE_INPUT_TOKENS: 7,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
        A.GEN_AI_RESPONSE_ID: "chatcmpl-fake1",
        A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
    }
    if stream:
        attrs[A.GEN_AI_REQUEST_STREAM] = True
    return attrs


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_call_is_one_span_in_either_order(
    both: Instrumentors,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    oa: Any,
    fake_openai: FakeOpenAI,
    order: str,
    stream: bool,
) -> None:
    both(order, OpenAIInstrumentor, OpenLLMetryOpenAI)
    if stream:
        chunks = oa.chat.completions.create(
            model=QWEN, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = oa.chat.completions.create(model=QWEN, messages=MESSAGES).choices[0].message.content
    assert text == "Hello there!"

    span = _only(span_exporter)
    attrs = _attrs(span)
    derived = _derived(attrs)
    if stream:
        _pop_stream_timing(attrs, chunks=4)  # three with content, then the usage chunk
    server_timings = {A.TT_SERVER_EVAL_NS: 4_500_000, A.TT_SERVER_PROMPT_EVAL_NS: 2_100_000}
    if order == OURS_FIRST:
        # OpenLLMetry's wrapper is on top and makes its span current: tokentrace's,
        # below, adds its facts to that span and starts none.
        assert span.name == "openai.chat"
        assert span.instrumentation_scope.name == OPENLLMETRY_OPENAI_SCOPE  # type: ignore[union-attr]
        assert attrs == {**_openllmetry_chat_attrs(oa, stream), **server_timings}
        assert _recorded_calls(metric_reader) == {OPENLLMETRY_OPENAI_SCOPE: 1}
    else:
        # tokentrace's is on top and sets the key: OpenLLMetry's skips the call.
        assert span.name == f"chat {QWEN}"
        assert span.instrumentation_scope.name == OPENAI_SCOPE  # type: ignore[union-attr]
        assert attrs == {**_tokentrace_chat_attrs(fake_openai.port, stream), **server_timings}
        assert _recorded_calls(metric_reader) == {OPENAI_SCOPE: 1}
    _assert_timed_figures(derived, stream)


def test_a_failed_call_in_a_borrowed_span_is_recorded_once_by_its_owner(
    both: Instrumentors, span_exporter: InMemorySpanExporter, oa: Any
) -> None:
    both(OURS_FIRST, OpenAIInstrumentor, OpenLLMetryOpenAI)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="missing", messages=MESSAGES)

    span = _only(span_exporter)
    assert span.name == "openai.chat"
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]  # OpenLLMetry's only
    attrs = _attrs(span)
    assert _derived(attrs)[A.TT_TOKEN_SOURCE] == "missing"  # the processor's, at its end
    assert not [key for key in attrs if key.startswith("tokentrace.")]  # nothing lent


# --- spans of the call made above tokentrace's layer -----------------------------------


@pytest.fixture
def ours(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Iterator[Callable[..., None]]:
    used: list[BaseInstrumentor] = []

    def _ours(cls: type[BaseInstrumentor], **kwargs: Any) -> None:
        instrumentor = cls()
        instrumentor.instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, **kwargs
        )
        used.append(instrumentor)

    yield _ours
    for instrumentor in used:
        instrumentor.uninstrument()


def _langchain_like(tracer_provider: TracerProvider, model: str) -> Any:
    """An LLM span as OpenLLMetry's LangChain handler makes one (model named after start)."""
    span = tracer_provider.get_tracer("langchain-like").start_span(
        "ChatOllama.chat",
        kind=SpanKind.CLIENT,
        attributes={A.LLM_SYSTEM: "Ollama", A.LLM_REQUEST_TYPE: "chat"},
    )
    span.set_attribute(A.GEN_AI_REQUEST_MODEL, model)
    return span


def _under(span: Any, suppress: bool) -> Any:
    """Make ``span`` current, with the key set as that handler sets it when ``suppress``."""
    ctx = trace.set_span_in_context(span)
    if suppress:
        ctx = otel_context.set_value(SUPPRESS_LANGUAGE_MODEL_INSTRUMENTATION_KEY, True, ctx)
    return otel_context.attach(ctx)


@pytest.mark.parametrize("suppress", [True, False], ids=["key set", "no key"])
def test_a_call_in_another_instrumentations_span_of_it_lends_that_span_its_facts(
    ours: Callable[..., None],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    client: Any,
    ollama_server: FakeOllama,
    suppress: bool,
) -> None:
    ollama_server.scripts[MODEL] = dataclasses.replace(TIMED, load_ns=250 * MS)
    ours(OllamaInstrumentor)
    host = _langchain_like(tracer_provider, MODEL)
    token = _under(host, suppress)
    try:
        client.chat(model=MODEL, messages=MESSAGES)
    finally:
        otel_context.detach(token)
    host.end()

    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert sorted(spans) == ["ChatOllama.chat", f"load_model {MODEL}"]  # no call span of ours
    attrs = _attrs(spans["ChatOllama.chat"])
    derived = _derived(attrs)
    assert attrs == {
        A.LLM_SYSTEM: "Ollama",
        A.LLM_REQUEST_TYPE: "chat",
        A.GEN_AI_REQUEST_MODEL: MODEL,
        A.GEN_AI_RESPONSE_MODEL: MODEL,
        A.GEN_AI_USAGE_INPUT_TOKENS: 7,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
        A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        A.TT_SERVER_LOAD_NS: 250 * MS,
        A.TT_SERVER_PROMPT_EVAL_NS: 2_100_000,
        A.TT_SERVER_EVAL_NS: 4_500_000,
        A.TT_SERVER_TOTAL_NS: 9_000_000,
    }
    assert derived[A.TT_TOKEN_SOURCE] == "reported"  # lent, and kept by the processor
    assert derived[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(1.5)
    assert derived[A.TT_PREFILL_MS_PER_TOKEN] == pytest.approx(0.3)
    assert derived[A.TT_LOAD_MS] == pytest.approx(250)
    load = spans[f"load_model {MODEL}"]
    assert load.parent is not None and load.parent.span_id == host.get_span_context().span_id
    # The span's owner records the call's metrics; tokentrace records none for it.
    assert _recorded_calls(metric_reader) == {}


def test_counts_the_borrowed_span_already_has_are_kept(
    ours: Callable[..., None],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    client: Any,
) -> None:
    ours(OllamaInstrumentor)
    host = _langchain_like(tracer_provider, MODEL)
    host.set_attributes({A.LLM_USAGE_PROMPT_TOKENS: 9, A.GEN_AI_RESPONSE_MODEL: "llama3.2:3b"})
    token = _under(host, suppress=True)
    try:
        client.chat(model=MODEL, messages=MESSAGES)
    finally:
        otel_context.detach(token)
    host.end()

    attrs = _attrs(_only(span_exporter))
    assert attrs[A.LLM_USAGE_PROMPT_TOKENS] == 9  # its own input count, in its dialect
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in attrs
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 3  # the count it lacked
    assert attrs[A.GEN_AI_RESPONSE_MODEL] == "llama3.2:3b"


def test_with_the_key_set_above_a_span_that_is_not_the_calls_nothing_is_recorded(
    ours: Callable[..., None],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    client: Any,
) -> None:
    ours(OllamaInstrumentor)
    host = _langchain_like(tracer_provider, "another-model")
    token = _under(host, suppress=True)
    try:
        client.chat(model=MODEL, messages=MESSAGES)
    finally:
        otel_context.detach(token)
    host.end()

    span = _only(span_exporter)
    assert span.name == "ChatOllama.chat"
    attrs = _attrs(span)
    assert _derived(attrs)[A.TT_TOKEN_SOURCE] == "missing"  # the processor's: no tokens
    assert attrs == {
        A.LLM_SYSTEM: "Ollama",
        A.LLM_REQUEST_TYPE: "chat",
        A.GEN_AI_REQUEST_MODEL: "another-model",
    }


@pytest.mark.parametrize(
    "operation",
    ["invoke_agent", "embeddings"],
    ids=["an agent span of the same model", "an embeddings span of the same model"],
)
def test_a_current_genai_span_of_another_kind_gets_a_child_call_span(
    ours: Callable[..., None],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    client: Any,
    operation: str,
) -> None:
    ours(OllamaInstrumentor)
    tracer = tracer_provider.get_tracer("app")
    attributes = {A.GEN_AI_OPERATION_NAME: operation, A.GEN_AI_REQUEST_MODEL: MODEL}
    with tracer.start_as_current_span(f"{operation} {MODEL}", attributes=attributes) as parent:
        client.chat(model=MODEL, messages=MESSAGES)

    call = next(s for s in span_exporter.get_finished_spans() if s.name == f"chat {MODEL}")
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id
    assert _attrs(call)[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(1.5)
    parent_attrs = next(
        _attrs(s) for s in span_exporter.get_finished_spans() if s.name != f"chat {MODEL}"
    )
    assert A.TT_SERVER_EVAL_NS not in parent_attrs


def test_a_second_call_in_a_span_already_lent_to_gets_its_own_span(
    ours: Callable[..., None],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    client: Any,
) -> None:
    ours(OllamaInstrumentor)
    tracer = tracer_provider.get_tracer("app")
    attributes = {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: MODEL}
    with tracer.start_as_current_span("my chat", attributes=attributes) as host:
        client.chat(model=MODEL, messages=MESSAGES)
        client.chat(model=MODEL, messages=MESSAGES)  # a retry, say

    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert sorted(spans) == [f"chat {MODEL}", "my chat"]
    assert _attrs(spans["my chat"])[A.TT_SERVER_EVAL_NS] == 4_500_000
    second = spans[f"chat {MODEL}"]
    assert second.parent is not None and second.parent.span_id == host.get_span_context().span_id


def test_the_key_is_set_while_tokentraces_wrapper_runs_the_call(
    tracer_provider: TracerProvider, client: Any, oa: Any
) -> None:
    seen: list[Any] = []

    def spy(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        seen.append(otel_context.get_value(SUPPRESS_LANGUAGE_MODEL_INSTRUMENTATION_KEY))
        return wrapped(*args, **kwargs)

    # Wrapped before tokentrace's: below them, where OpenLLMetry's wrappers are then.
    chat = openai.resources.chat.completions.Completions
    wrapt.wrap_function_wrapper(ollama.Client, "_request", spy)
    wrapt.wrap_function_wrapper(chat, "create", spy)
    OllamaInstrumentor().instrument(tracer_provider=tracer_provider)
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider)
    try:
        client.chat(model=MODEL, messages=MESSAGES)
        list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
        oa.chat.completions.create(model=QWEN, messages=MESSAGES)
        list(oa.chat.completions.create(model=QWEN, messages=MESSAGES, stream=True))
    finally:
        OllamaInstrumentor().uninstrument()
        OpenAIInstrumentor().uninstrument()
        for owner, name in ((ollama.Client, "_request"), (chat, "create")):
            setattr(owner, name, vars(owner)[name].__wrapped__)
    assert seen == [SUPPRESSED_BY_US] * 4
    assert otel_context.get_value(SUPPRESS_LANGUAGE_MODEL_INSTRUMENTATION_KEY) is None
