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
  starts with the call and lasts ``load_duration``, when the server reports one of at
  least ``min_load_ms`` (an ``instrument()`` argument, default 0: every reported load).
* Streams (``stream=True``): ollama-python sends the request only when iteration
  starts, so the span starts then and ends when the stream is exhausted or closed.
  ``gen_ai.response.time_to_first_chunk`` (seconds) is measured from the request,
  ``tokentrace.stream.generation_ms`` from the first to the last chunk.

Errors (``ollama.ResponseError`` for an unknown model, connection errors) mark the
span ``ERROR`` with ``error.type`` and are re-raised unchanged. Prompt and reply
text are recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Generator,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from tokentrace import attributes as A
from tokentrace.instrumentation._common import (
    BaseInstrumentor,
    Call,
    Patcher,
    Telemetry,
    chat_messages,
    guard,
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

__all__ = ["OllamaInstrumentor"]


@dataclass(frozen=True, slots=True)
class _Request:
    """What a call asked for, read from the request body ollama-python built."""

    operation: str
    model: str
    stream: bool
    body: Mapping[str, Any]
    attrs: dict[str, Any]

    def start(self, telemetry: Telemetry, parent: otel_context.Context | None = None) -> Call:
        call = Call(
            telemetry, f"{self.operation} {self.model}", SpanKind.CLIENT, self.attrs, parent
        )
        if call.recording:
            guard(_record_request, call, self, telemetry.capture_content)
        return call


def _parse(operation: str, instance: Any, kwargs: Mapping[str, Any]) -> _Request:
    body = kwargs.get("json") or {}
    model = str(body.get("model") or "")
    stream = bool(kwargs.get("stream", False))
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: operation,
        A.GEN_AI_PROVIDER_NAME: PROVIDER,
        A.GEN_AI_REQUEST_MODEL: model,
    }
    url = instance._client.base_url
    if url.host:
        attrs[A.SERVER_ADDRESS] = url.host
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port:
            attrs[A.SERVER_PORT] = port
    if stream:
        attrs[A.GEN_AI_REQUEST_STREAM] = True
    return _Request(operation, model, stream, body, attrs)


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
    if streamed_text is not None or _wants_output(call, request):
        text = "".join(streamed_text) if streamed_text is not None else _reply_text(response)
        attrs[A.GEN_AI_OUTPUT_MESSAGES] = text_messages("assistant", text, done_reason)


def _wants_output(call: Call, request: _Request) -> bool:
    return call.telemetry.capture_content and request.operation != A.OP_EMBEDDINGS


def _load_span(call: Call, request: _Request, load_ns: int) -> None:
    """The server's model load, as a child span at the start of the call."""
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: A.OP_LOAD_MODEL,
        A.GEN_AI_PROVIDER_NAME: PROVIDER,
        A.GEN_AI_REQUEST_MODEL: request.model,
        A.TT_LOAD_SOURCE: "server",
        A.TT_SERVER_LOAD_NS: load_ns,
    }
    for key in (A.SERVER_ADDRESS, A.SERVER_PORT):
        if key in request.attrs:
            attrs[key] = request.attrs[key]
    span = call.telemetry.tracer.start_span(
        f"{A.OP_LOAD_MODEL} {request.model}",
        context=trace.set_span_in_context(call.span),
        kind=SpanKind.INTERNAL,
        attributes=attrs,
        start_time=call.start_ns,
    )
    span.end(end_time=call.start_ns + load_ns)


def _traced_stream(
    telemetry: Telemetry,
    request: _Request,
    parts: Generator[Any, None, None],
    parent: otel_context.Context,
    min_load_ns: int,
) -> Iterator[Any]:
    # Runs on first next(): that is when ollama-python sends the request.
    call = request.start(telemetry, parent)
    text: list[str] | None = [] if telemetry.capture_content and call.recording else None
    last = None
    try:
        for part in parts:
            call.tick()
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
    if last is not None and getattr(last, "done", False):
        guard(_record_response, call, request, last, min_load_ns, text)
    call.finish()


async def _traced_astream(
    telemetry: Telemetry,
    request: _Request,
    parts: AsyncGenerator[Any, None],
    parent: otel_context.Context,
    min_load_ns: int,
) -> AsyncIterator[Any]:
    call = request.start(telemetry, parent)
    text: list[str] | None = [] if telemetry.capture_content and call.recording else None
    last = None
    try:
        async for part in parts:
            call.tick()
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
    if last is not None and getattr(last, "done", False):
        guard(_record_response, call, request, last, min_load_ns, text)
    call.finish()


def _request_of(args: tuple[Any, ...], instance: Any, kwargs: Mapping[str, Any]) -> _Request | None:
    operation = _OPERATIONS.get(args[2]) if len(args) > 2 else None
    if operation is None or not is_instrumentation_enabled():
        return None
    try:
        return _parse(operation, instance, kwargs)
    except Exception:  # noqa: BLE001 - a request we cannot read is simply not traced
        return None


def _sync_wrapper(telemetry: Telemetry, min_load_ns: int) -> Callable[..., Any]:
    def traced_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        request = _request_of(args, instance, kwargs)
        if request is None:
            return wrapped(*args, **kwargs)
        if request.stream:
            parent = otel_context.get_current()
            return _traced_stream(telemetry, request, wrapped(*args, **kwargs), parent, min_load_ns)
        call = request.start(telemetry)
        token = call.attach()
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            call.detach(token)
        guard(_record_response, call, request, response, min_load_ns)
        call.finish()
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
            parent = otel_context.get_current()
            parts = await wrapped(*args, **kwargs)
            return _traced_astream(telemetry, request, parts, parent, min_load_ns)
        call = request.start(telemetry)
        token = call.attach()
        try:
            response = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            call.detach(token)
        guard(_record_response, call, request, response, min_load_ns)
        call.finish()
        return response

    return traced_request


class OllamaInstrumentor(BaseInstrumentor):
    """Instruments ``ollama.Client`` and ``ollama.AsyncClient``.

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``,
    ``capture_content`` (overrides the environment variable) and ``min_load_ms``.
    """

    _patcher: Patcher | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("ollama >= 0.4",)

    def _instrument(self, **kwargs: Any) -> None:
        telemetry = telemetry_from(__name__, kwargs)
        min_load_ns = int(float(kwargs.get("min_load_ms") or 0) * 1e6)
        self._patcher = Patcher()
        self._patcher.add(_MODULE, "Client._request", _sync_wrapper(telemetry, min_load_ns))
        self._patcher.add(_MODULE, "AsyncClient._request", _async_wrapper(telemetry, min_load_ns))
        self._patcher.apply()

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._patcher is not None:
            self._patcher.remove()
