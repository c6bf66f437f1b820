"""Ollama instrumentation: every ``generate``, ``chat`` and ``embed`` call as a span,
with the server's own timings.

Usage::

    from tokentrace.instrumentation.ollama import OllamaInstrumentor

    OllamaInstrumentor().instrument()          # or tokentrace.instrument()
    ollama.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])

``ollama.Client`` and ``ollama.AsyncClient`` (and the module-level ``ollama.chat``
etc., which use a default ``Client``) are covered: ``generate`` →
``text_completion {model}``, ``chat`` → ``chat {model}``, ``embed`` (``/api/embed``)
and the legacy ``embeddings`` → ``embeddings {model}``; kind ``CLIENT``,
``gen_ai.provider.name = "ollama"``, ``server.address``/``server.port`` from the
client's host.

What the span records, from the response (the final ``done`` chunk of a stream):

* ``gen_ai.usage.input_tokens`` = ``prompt_eval_count``, ``gen_ai.usage.output_tokens``
  = ``eval_count``. Ollama omits ``prompt_eval_count`` when the prompt came from its
  cache: the span then says ``tokentrace.prompt_cached = true`` and carries **no**
  input count, rather than a false 0.
* The server timings as reported, in nanoseconds: ``tokentrace.server.load_duration_ns``,
  ``…prompt_eval_duration_ns``, ``…eval_duration_ns``, ``…total_duration_ns`` (absent
  when Ollama omits them, i.e. when zero). The processor and the store derive
  decode ms/token (``eval_duration / eval_count``), prefill ms/token and ms/token
  excluding the load from them.
* A child span ``load_model {model}`` (``gen_ai.operation.name = load_model``) that
  starts with the call and lasts ``load_duration``, when the server reports a load of
  at least ``min_load_ms`` (an ``instrument()`` argument, default
  :data:`DEFAULT_MIN_LOAD_MS` = 100; 0 makes every reported ``load_duration`` a span).
  A warm Ollama reports a few ms of ``load_duration`` on every call (finding the
  loaded runner), which is no model load: as ``load_model`` spans those would be
  counted as loads by ``tokentrace.efficiency`` (``loads``, ``avg_load_ms``) and
  drown the real ones, and would cost a second span per call. The reported figure
  stays on the inference span (``tokentrace.server.load_duration_ns``) either way,
  so ms/token still excludes it.
* ``tokentrace.request.keep_alive_s``: the ``keep_alive`` the request asked for, in
  seconds (-1: forever), whether or not content is captured; absent when the call
  states none (the server's default applies). ``tokentrace.expected_latency()`` reads
  it to tell whether the model is still loaded.
* Streams (``stream=True``): ollama-python sends the request only when iteration
  starts, so the span starts then and ends when the stream is exhausted or closed.
  ``gen_ai.response.time_to_first_chunk`` (seconds) is measured from the request,
  ``tokentrace.stream.generation_ms`` from the first to the last chunk.

Errors (``ollama.ResponseError`` for an unknown model, connection errors) mark the
span ``ERROR`` with ``error.type`` and are re-raised unchanged. Prompt and reply
text are recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.

Beside other Ollama instrumentations, one call makes one span:

* OpenLLMetry's ``opentelemetry-instrumentation-ollama`` (and OpenLIT's) wrap the same
  ``Client._request``. OpenLLMetry's starts its span without making it current, so
  a wrapper below it cannot tell the call is traced; tokentrace therefore keeps its
  wrapper on top of theirs whatever the order of instrumenting (it re-wraps on top
  after every ``BaseInstrumentor.instrument()``), and sets OpenLLMetry's
  ``suppress_language_model_instrumentation`` context key for the call, which makes
  OpenLLMetry's wrapper skip it. The span is tokentrace's.
* Inside another instrumentation's span of the same call (the current span is a
  recording GenAI span of the same kind — chat/completion, or embeddings — for the
  same request model, e.g. LangChain's ``ChatOllama.chat`` span or OpenInference's
  ``Client.chat`` span), no span is started: that span gets tokentrace's server
  timings, stream timing, ``tokentrace.token_source``, the ``load_model`` child span
  and whatever usage it lacks (see ``docs/instrumentation.md``).
* With the key already set by someone else (OpenLLMetry's LangChain handler sets it
  under its LLM span), tokentrace starts no span either: it adds its facts to the
  current span when that is the call's span as above, and otherwise records nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Generator,
    Iterator,
    Mapping,
)
from time import perf_counter_ns
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from tokentrace import attributes as A
from tokentrace.instrumentation._common import (
    LM_SUPPRESS_KEY,
    SUPPRESSED_BY_US,
    BaseInstrumentor,
    Call,
    Patcher,
    Server,
    Servers,
    Telemetry,
    base_url,
    chat_messages,
    enabled_context,
    guard,
    host_span,
    start_call,
    suppress_below,
    telemetry_from,
    text_messages,
    to_json,
)

PROVIDER = "ollama"
_MODULE = "ollama._client"
_OPERATIONS = {
    "/api/generate": A.OP_TEXT_COMPLETION,
    "/api/chat": A.OP_CHAT,
    "/api/embed": A.OP_EMBEDDINGS,
    "/api/embeddings": A.OP_EMBEDDINGS,
}
# Reported server timings (ns) -> the raw attribute they are kept under.
_TIMINGS = (
    ("load_duration", A.TT_SERVER_LOAD_NS),
    ("prompt_eval_duration", A.TT_SERVER_PROMPT_EVAL_NS),
    ("eval_duration", A.TT_SERVER_EVAL_NS),
    ("total_duration", A.TT_SERVER_TOTAL_NS),
)
_DEFAULT_PORTS = {"http": 80, "https": 443}

DEFAULT_MIN_LOAD_MS = 100.0
"""Smallest reported ``load_duration`` (ms) that becomes a ``load_model`` span.

A warm Ollama reports single-digit ms (the scheduler finding the loaded runner);
a real load starts a runner process and reads the weights: hundreds of ms and up.
"""

__all__ = ["DEFAULT_MIN_LOAD_MS", "OllamaInstrumentor"]


class _Request:
    """What a call asked for, read from the request body ollama-python built."""

    __slots__ = ("body", "context", "host", "model", "operation", "server", "shape", "stream")

    def __init__(
        self,
        operation: str,
        model: str,
        stream: bool,
        body: Mapping[str, Any],
        server: Server,
        context: otel_context.Context,
        host: Span | None,
    ) -> None:
        self.operation = operation
        self.model = model
        self.stream = stream
        self.body = body
        self.server = server
        self.context = context  # where the call was made: the span's parent
        self.host = host  # another instrumentation's span of this call, to borrow
        self.shape = server.shape(operation, model, stream)

    def start(self, telemetry: Telemetry) -> Call:
        call = start_call(telemetry, self.shape, self.context, self.host)
        if call.recording and self.body.get("keep_alive") is not None:
            # Borrowed spans too: how long the model stays loaded is this call's fact.
            keep_alive = guard(keep_alive_seconds, self.body["keep_alive"])
            if keep_alive is not None:
                call.attrs[A.TT_REQUEST_KEEP_ALIVE_S] = keep_alive
        # ollama-python always sends an "options" key, usually None: nothing to read.
        # A borrowed span has its owner's reading of the request.
        if (
            call.owned
            and call.recording
            and (telemetry.capture_content or self.body.get("options"))
        ):
            guard(_record_request, call, self, telemetry.capture_content)
        return call


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive`` in seconds, as the server reads it; negative: forever.

    A number is seconds; a string is a number of seconds or a Go duration
    (``"5m"``, ``"1h30m"``, ``"-1m"``); any negative duration keeps the model loaded
    for good (recorded as -1). Anything else: None (the server would refuse it).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.lstrip("+"))
            parts = _GO_DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                return None
            seconds = sign * sum(float(n) * _GO_UNIT_S[u] for n, u in parts)
    else:
        return None
    if not math.isfinite(seconds):
        return None
    return -1.0 if seconds < 0 else seconds


def _server(url: Any) -> Server:
    """The server at a client's base URL: its ``server.address`` and ``server.port``."""
    attrs: dict[str, Any] = {}
    if url.host:
        attrs[A.SERVER_ADDRESS] = url.host
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port:
            attrs[A.SERVER_PORT] = port
    return Server(PROVIDER, attrs)


_servers = Servers(_server)


def _record_request(call: Call, request: _Request, capture: bool) -> None:
    options = request.body.get("options") or {}
    if isinstance(options, Mapping):
        if options.get("temperature") is not None:
            call.attrs[A.GEN_AI_REQUEST_TEMPERATURE] = float(options["temperature"])
        if options.get("num_predict") is not None:
            call.attrs[A.GEN_AI_REQUEST_MAX_TOKENS] = int(options["num_predict"])
    if capture:
        call.attrs[A.GEN_AI_INPUT_MESSAGES] = _input_messages(request)


def _input_messages(request: _Request) -> str:
    body = request.body
    if request.operation == A.OP_CHAT:
        return chat_messages(body.get("messages"))
    if request.operation == A.OP_TEXT_COMPLETION:
        return text_messages("user", str(body.get("prompt") or ""))
    inputs = body.get("input", body.get("prompt"))
    return to_json(inputs)


def _reply_text(response: Any) -> str:
    message = getattr(response, "message", None)
    if message is not None:
        return str(getattr(message, "content", None) or "")
    return str(getattr(response, "response", None) or "")


def _record_response(
    call: Call,
    request: _Request,
    response: Any,
    min_load_ns: int,
    streamed_text: list[str] | None = None,
) -> None:
    """Usage and server timings of a finished (``done``) response."""
    get = response.__dict__.get  # pydantic models keep fields here; absent = None
    output_tokens = get("eval_count")
    input_tokens = get("prompt_eval_count")
    call.set_response_model(get("model"))
    call.set_tokens(input_tokens, output_tokens)
    eval_ns = get("eval_duration")
    if eval_ns and output_tokens:
        call.decode_s = eval_ns / 1e9 / output_tokens
    if not call.recording:
        return
    attrs = call.attrs
    if input_tokens is None and request.operation != A.OP_EMBEDDINGS:
        # Ollama omits the count on a prompt-cache hit: say so instead of recording 0.
        attrs[A.TT_PROMPT_CACHED] = True
    done_reason = get("done_reason")
    if done_reason:
        attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = (done_reason,)
    for field, key in _TIMINGS:
        value = get(field)
        if value:
            attrs[key] = value
    load_ns = get("load_duration")
    if load_ns and load_ns >= min_load_ns:
        _load_span(call, request, int(load_ns))
    if streamed_text is not None:
        text = "".join(streamed_text)
    elif call.telemetry.capture_content and request.operation != A.OP_EMBEDDINGS:
        text = _reply_text(response)
    else:
        return
    attrs[A.GEN_AI_OUTPUT_MESSAGES] = text_messages("assistant", text, done_reason)


def _load_span(call: Call, request: _Request, load_ns: int) -> None:
    """The server's model load, as a child span at the start of the call."""
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: A.OP_LOAD_MODEL,
        A.GEN_AI_PROVIDER_NAME: PROVIDER,
        A.GEN_AI_REQUEST_MODEL: request.model,
        A.TT_LOAD_SOURCE: "server",
        A.TT_SERVER_LOAD_NS: load_ns,
    }
    attrs.update(request.server.attrs)
    span = call.telemetry.tracer.start_span(
        f"{A.OP_LOAD_MODEL} {request.model}",
        context=trace.set_span_in_context(call.span),
        kind=SpanKind.INTERNAL,
        attributes=attrs,
        start_time=call.start_ns,
    )
    span.end(end_time=call.start_ns + load_ns)


def _stream_text(telemetry: Telemetry, call: Call) -> list[str] | None:
    return [] if telemetry.capture_content and call.recording else None


def _traced_stream(
    telemetry: Telemetry, request: _Request, parts: Generator[Any, None, None], min_load_ns: int
) -> Iterator[Any]:
    # Runs on first next(): that is when ollama-python sends the request.
    call = request.start(telemetry)
    text = _stream_text(telemetry, call)
    last = None
    try:
        for part in parts:
            now = perf_counter_ns()  # Call.tick(), written out: the per-chunk path
            if call.first_ns is None:
                call.first_ns = now
            call.last_ns = now
            call.chunks += 1
            last = part
            if text is not None:
                text.append(guard(_reply_text, part) or "")
            yield part
    except GeneratorExit:
        call.finish()  # the caller stopped early: what was streamed is still a call
        raise
    except BaseException as exc:
        call.fail(exc)
        raise
    finally:
        parts.close()  # release the HTTP response now
    _end_stream(call, request, last, min_load_ns, text)


async def _traced_astream(
    telemetry: Telemetry, request: _Request, parts: AsyncGenerator[Any, None], min_load_ns: int
) -> AsyncIterator[Any]:
    call = request.start(telemetry)
    text = _stream_text(telemetry, call)
    last = None
    try:
        async for part in parts:
            now = perf_counter_ns()  # Call.tick(), written out: the per-chunk path
            if call.first_ns is None:
                call.first_ns = now
            call.last_ns = now
            call.chunks += 1
            last = part
            if text is not None:
                text.append(guard(_reply_text, part) or "")
            yield part
    except GeneratorExit:
        call.finish()
        raise
    except BaseException as exc:
        call.fail(exc)
        raise
    finally:
        await parts.aclose()
    _end_stream(call, request, last, min_load_ns, text)


def _end_stream(
    call: Call, request: _Request, last: Any, min_load_ns: int, text: list[str] | None
) -> None:
    """A stream read to its end: what its final (``done``) part said, then the end."""
    if last is not None and getattr(last, "done", False):
        call.end(_record_response, request, last, min_load_ns, text)
    else:
        call.finish()


def _request_of(args: tuple[Any, ...], instance: Any, kwargs: Mapping[str, Any]) -> _Request | None:
    operation = _OPERATIONS.get(args[2]) if len(args) > 2 else None
    if operation is None:
        return None
    context = enabled_context()
    if context is None:
        return None
    suppressed = context.get(LM_SUPPRESS_KEY)
    if suppressed is SUPPRESSED_BY_US:
        return None  # inside tokentrace's own wrapper of this call (see Patcher.restack)
    try:
        body = kwargs.get("json") or {}
        model = str(body.get("model") or "")
        host = host_span(context, operation, model)
        if suppressed and host is None:
            return None  # traced above, by someone whose span is not this call's
        stream = bool(kwargs.get("stream", False))
        server = _servers(base_url(instance._client))
        return _Request(operation, model, stream, body, server, context, host)
    except Exception:  # noqa: BLE001 - a request we cannot read is simply not traced
        return None


# Client._request and AsyncClient._request differ only by the await: each wrapper
# is the same four steps (read the request; hand a stream its lazy wrapper; run the
# call inside its span; record the response), the shared parts being _request_of,
# Call and _record_response.
def _sync_wrapper(telemetry: Telemetry, min_load_ns: int) -> Callable[..., Any]:
    def traced_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        request = _request_of(args, instance, kwargs)
        if request is None:
            return wrapped(*args, **kwargs)
        if request.stream:
            # The request is sent later, on iteration; a wrapper below decides now.
            token = suppress_below(request.context)
            try:
                parts = wrapped(*args, **kwargs)
            finally:
                otel_context.detach(token)
            return _traced_stream(telemetry, request, parts, min_load_ns)
        with request.start(telemetry) as call:
            response = wrapped(*args, **kwargs)
        call.end(_record_response, request, response, min_load_ns)
        return response

    return traced_request


def _async_wrapper(telemetry: Telemetry, min_load_ns: int) -> Callable[..., Any]:
    async def traced_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        request = _request_of(args, instance, kwargs)
        if request is None:
            return await wrapped(*args, **kwargs)
        if request.stream:
            token = suppress_below(request.context)
            try:
                parts = await wrapped(*args, **kwargs)
            finally:
                otel_context.detach(token)
            return _traced_astream(telemetry, request, parts, min_load_ns)
        with request.start(telemetry) as call:
            response = await wrapped(*args, **kwargs)
        call.end(_record_response, request, response, min_load_ns)
        return response

    return traced_request


class OllamaInstrumentor(BaseInstrumentor):
    """Instruments ``ollama.Client`` and ``ollama.AsyncClient``.

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``,
    ``capture_content`` (overrides the environment variable) and ``min_load_ms``
    (default :data:`DEFAULT_MIN_LOAD_MS`; 0: a ``load_model`` span for every
    reported ``load_duration``).
    """

    _patcher: Patcher | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("ollama >= 0.4",)

    def _instrument(self, **kwargs: Any) -> None:
        telemetry = telemetry_from(__name__, kwargs)
        min_load_ms = kwargs.get("min_load_ms")
        if min_load_ms is None:
            min_load_ms = DEFAULT_MIN_LOAD_MS
        min_load_ns = int(float(min_load_ms) * 1e6)
        # outermost: above OpenLLMetry's wrapper of the same method, whose span a
        # wrapper below cannot see (see the module docs).
        self._patcher = Patcher(outermost=True)
        self._patcher.add(_MODULE, "Client._request", _sync_wrapper(telemetry, min_load_ns))
        self._patcher.add(_MODULE, "AsyncClient._request", _async_wrapper(telemetry, min_load_ns))
        self._patcher.apply()

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._patcher is not None:
            self._patcher.remove()
