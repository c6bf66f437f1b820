"""OpenAI-compatible instrumentation: the ``openai`` client against any server.

Usage::

    from tokentrace.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()          # or tokentrace.instrument()
    client = openai.OpenAI(base_url="http://localhost:8000/v1", api_key="-")
    client.chat.completions.create(model="qwen2.5", messages=[...])

Covered, sync (``OpenAI``) and async (``AsyncOpenAI``), streamed and not:
``chat.completions.create`` → ``chat {model}``, ``completions.create`` →
``text_completion {model}``, ``embeddings.create`` → ``embeddings {model}``; kind
``CLIENT``, ``server.address``/``server.port`` from the client's ``base_url``.

``gen_ai.provider.name`` is chosen from the ``base_url``, because most servers
that speak this API are not OpenAI:

* known hosts: ``api.openai.com`` → ``openai``, ``*.openai.azure.com`` →
  ``azure.ai.openai``, and Groq, DeepSeek, Mistral, xAI, Perplexity, OpenRouter;
* otherwise the default port of a local server: 11434 → ``ollama``, 8000 →
  ``vllm``, 8080 → ``llama.cpp``, 1234 → ``lm_studio``;
* otherwise ``openai_compatible``.

Pass ``instrument(providers={"gpu-box:9000": "sglang"})`` (keys ``host:port`` or
``host``) to name your own servers.

Usage comes from the response, or for a stream from the final chunk that the
server sends when the request sets ``stream_options={"include_usage": True}``
(the instrumentation never changes the request to ask for it). Without that chunk
the output tokens are the number of chunks that carried content, marked
``tokentrace.token_source = estimated``. Cached (``prompt_tokens_details.cached_tokens``)
and reasoning (``completion_tokens_details.reasoning_tokens``) tokens are recorded
when reported. A ``prompt_tokens`` of 0 on a chat or completion (Ollama's ``/v1``
on a prompt-cache hit) is recorded as ``tokentrace.prompt_cached = true``, not as
0 input tokens. When a llama.cpp server attaches its ``timings``, its prompt and
generation times are kept as ``tokentrace.server.*_ns``, so decode and prefill
ms/token come from the server as they do for Ollama.

A stream's span ends when the stream is exhausted or closed;
``gen_ai.response.time_to_first_chunk`` is measured from the ``create()`` call.
Errors (``openai.NotFoundError`` …) mark the span ``ERROR`` with ``error.type`` and
are re-raised unchanged. Message text is recorded only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.

Beside other OpenAI instrumentations, one call makes one span. OpenLLMetry's
``opentelemetry-instrumentation-openai`` wraps the same ``create`` methods and makes
its span current, with the request model on it, before it calls down; whichever
of the two was instrumented last runs first:

* tokentrace first: it sets OpenLLMetry's ``suppress_language_model_instrumentation``
  context key for the call, and OpenLLMetry's wrapper skips it. The span is
  tokentrace's.
* OpenLLMetry first: tokentrace finds the current span to be a recording GenAI span
  of the same kind (chat/completion, or embeddings) for the same request model,
  starts none, and adds to that span what only it knows — llama.cpp's server
  timings, the stream's timing, ``tokentrace.token_source`` and usage the span
  lacks — so the processor derives ms/token on it (see ``docs/instrumentation.md``).

With the key already set by someone else, tokentrace starts no span: it adds its
facts to the current span when that is the call's span as above, and otherwise
records nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Span

from tokentrace import attributes as A
from tokentrace.instrumentation.caches import Server, Servers
from tokentrace.instrumentation.call import Call, start_call
from tokentrace.instrumentation.content import chat_messages, to_json
from tokentrace.instrumentation.fields import base_url, fields
from tokentrace.instrumentation.guard import guard
from tokentrace.instrumentation.patching import BaseInstrumentor, Patcher
from tokentrace.instrumentation.recording import RecordingTools, recording_tools
from tokentrace.instrumentation.suppression import (
    LM_SUPPRESS_KEY,
    SUPPRESSED_BY_US,
    enabled_context,
    host_span,
)
from tokentrace.instrumentation._openai_stream import (
    StreamState,
    number,
    record_llamacpp_timings,
    record_usage,
    traced_async_stream,
    traced_stream,
)

__all__ = ["OpenAIInstrumentor", "provider_for"]

_log = logging.getLogger(__name__)

_HOSTS = {
    "api.openai.com": "openai",
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral_ai",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
    "openrouter.ai": "openrouter",
}
_HOST_SUFFIXES = ((".openai.azure.com", "azure.ai.openai"),)
_PORTS = {11434: "ollama", 8000: "vllm", 8080: "llama.cpp", 1234: "lm_studio"}
_FALLBACK_PROVIDER = "openai_compatible"
# The create() arguments _record_request reads.
_REQUEST_OPTIONS = frozenset(("temperature", "max_tokens", "max_completion_tokens"))
_DEFAULT_PORTS = {"http": 80, "https": 443}

_TARGETS = (
    ("openai.resources.chat.completions", "Completions", "AsyncCompletions", A.OP_CHAT),
    ("openai.resources.completions", "Completions", "AsyncCompletions", A.OP_TEXT_COMPLETION),
    ("openai.resources.embeddings", "Embeddings", "AsyncEmbeddings", A.OP_EMBEDDINGS),
)


@functools.lru_cache(maxsize=256)
def provider_for(host: str, port: int | None, overrides: tuple[tuple[str, str], ...] = ()) -> str:
    """The ``gen_ai.provider.name`` for a server at ``host:port`` (see module docs)."""
    named = dict(overrides)
    for key in (f"{host}:{port}", host):
        if key in named:
            return named[key]
    if host in _HOSTS:
        return _HOSTS[host]
    for suffix, provider in _HOST_SUFFIXES:
        if host.endswith(suffix):
            return provider
    return _PORTS.get(port or 0, _FALLBACK_PROVIDER)


class _Request:
    """What a ``create()`` call asked for."""

    __slots__ = ("context", "host", "kwargs", "model", "operation", "shape", "stream")

    def __init__(
        self,
        operation: str,
        kwargs: Mapping[str, Any],
        server: Server,
        context: otel_context.Context,
        host: Span | None,
    ) -> None:
        self.operation = operation
        self.model = str(kwargs.get("model") or "")
        self.stream = kwargs.get("stream") is True
        self.kwargs = kwargs
        self.context = context  # where the call was made: the span's parent
        self.host = host  # another instrumentation's span of this call, to borrow
        self.shape = server.shape(operation, self.model, self.stream)

    def start(self, tools: RecordingTools) -> Call:
        call = start_call(tools, self.shape, self.context, self.host)
        capture = tools.capture_content
        # Most calls set none of the request options recorded: nothing to read then.
        # A borrowed span has its owner's reading of the request.
        if (
            call.owned
            and call.recording
            and (capture or not _REQUEST_OPTIONS.isdisjoint(self.kwargs))
        ):
            guard(_record_request, call, self, capture)
        return call


def _servers(overrides: tuple[tuple[str, str], ...]) -> Servers:
    """Per base URL: ``gen_ai.provider.name``, ``server.address``, ``server.port``."""

    def compute(url: Any) -> Server:
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        provider = provider_for(url.host, port, overrides)
        attrs: dict[str, Any] = {
            A.GEN_AI_PROVIDER_NAME: provider,
            A.SERVER_ADDRESS: url.host,
        }
        if port:
            attrs[A.SERVER_PORT] = port
        return Server(provider, attrs)

    return Servers(compute)


def _request_of(
    instance: Any, kwargs: Mapping[str, Any], servers: Servers, operation: str
) -> _Request | None:
    context = enabled_context()
    if context is None:
        return None
    suppressed = context.get(LM_SUPPRESS_KEY)
    if suppressed is SUPPRESSED_BY_US:
        return None  # inside tokentrace's own wrapper of this call
    try:
        host = host_span(context, operation, str(kwargs.get("model") or ""))
        if suppressed and host is None:
            return None  # traced above, by someone whose span is not this call's
        return _Request(operation, kwargs, servers(base_url(instance._client)), context, host)
    except Exception:  # noqa: BLE001 - a request we cannot read is simply not traced
        _log.debug("tokentrace: unreadable %s request", operation, exc_info=True)
        return None


def _record_request(call: Call, request: _Request, capture: bool) -> None:
    kwargs = request.kwargs
    temperature = kwargs.get("temperature")
    if number(temperature):
        call.attrs[A.GEN_AI_REQUEST_TEMPERATURE] = float(temperature)
    max_tokens = kwargs.get("max_completion_tokens", kwargs.get("max_tokens"))
    if number(max_tokens):
        call.attrs[A.GEN_AI_REQUEST_MAX_TOKENS] = int(max_tokens)
    if capture:
        call.attrs[A.GEN_AI_INPUT_MESSAGES] = _input_messages(request)


def _input_messages(request: _Request) -> str:
    kwargs = request.kwargs
    if request.operation == A.OP_CHAT:
        return chat_messages(kwargs.get("messages"))
    if request.operation == A.OP_TEXT_COMPLETION:
        prompt = kwargs.get("prompt")
        text = prompt if isinstance(prompt, str) else to_json(prompt)
        return to_json([{"role": "user", "parts": [{"type": "text", "content": text}]}])
    return to_json(kwargs.get("input"))


def _record_response(call: Call, request: _Request, response: Any) -> None:
    # fields(), not getattr(): an embeddings response has no id nor choices, and few
    # responses carry llama.cpp's timings; pydantic is slow to say so.
    get = fields(response)
    call.set_response_model(get("model"))
    usage = get("usage")
    if usage is not None:
        record_usage(call, request.operation, usage)
    if not call.recording:
        return
    response_id = get("id")
    if isinstance(response_id, str):
        call.attrs[A.GEN_AI_RESPONSE_ID] = response_id
    choices = get("choices") or ()
    reasons = [c.finish_reason for c in choices if getattr(c, "finish_reason", None)]
    if reasons:
        call.attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
    timings = get("timings")
    if timings is not None:
        record_llamacpp_timings(call, timings)
    if call.tools.capture_content and choices:
        call.attrs[A.GEN_AI_OUTPUT_MESSAGES] = to_json([_choice_message(c) for c in choices])


def _choice_message(choice: Any) -> dict[str, Any]:
    message = getattr(choice, "message", None)
    text = (
        getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
    )
    return {
        "role": "assistant",
        "parts": [{"type": "text", "content": text or ""}],
        "finish_reason": getattr(choice, "finish_reason", None),
    }


@functools.cache
def _stream_types() -> tuple[type, type]:
    # Imported on first use: instrumenting must not import openai.
    from openai import AsyncStream, Stream

    return Stream, AsyncStream


def _end(call: Call, request: _Request, result: Any, async_: bool) -> Any:
    """What ``create()`` returns, once the call is done: a stream follows it to its end."""
    if request.stream and isinstance(result, _stream_types()[async_]):
        state = StreamState(request.operation, call.tools.capture_content)
        return (traced_async_stream if async_ else traced_stream)(result, call, state)
    call.end(_record_response, request, result)
    return result


# The sync and async create() differ only by the await: the steps are shared
# (_request_of, Call as the span's scope, _end).
def _sync_wrapper(
    tools: RecordingTools, operation: str, overrides: tuple[tuple[str, str], ...]
) -> Callable[..., Any]:
    servers = _servers(overrides)

    def traced_create(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        request = _request_of(instance, kwargs, servers, operation)
        if request is None:
            return wrapped(*args, **kwargs)
        with request.start(tools) as call:
            result = wrapped(*args, **kwargs)
        return _end(call, request, result, async_=False)

    return traced_create


def _async_wrapper(
    tools: RecordingTools, operation: str, overrides: tuple[tuple[str, str], ...]
) -> Callable[..., Any]:
    servers = _servers(overrides)

    async def traced_create(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        request = _request_of(instance, kwargs, servers, operation)
        if request is None:
            return await wrapped(*args, **kwargs)
        with request.start(tools) as call:
            result = await wrapped(*args, **kwargs)
        return _end(call, request, result, async_=True)

    return traced_create


class OpenAIInstrumentor(BaseInstrumentor):
    """Instruments the ``openai`` client's completions, chat completions and embeddings.

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``,
    ``capture_content`` (overrides the environment variable) and ``providers``
    (``{"host:port" or "host": provider name}``).
    """

    _patcher: Patcher | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 1.40",)

    def _instrument(self, **kwargs: Any) -> None:
        tools = recording_tools(__name__, kwargs)
        overrides = tuple(sorted(dict(kwargs.get("providers") or {}).items()))
        self._patcher = Patcher()
        for module, sync_class, async_class, operation in _TARGETS:
            self._patcher.add(
                module, f"{sync_class}.create", _sync_wrapper(tools, operation, overrides)
            )
            self._patcher.add(
                module, f"{async_class}.create", _async_wrapper(tools, operation, overrides)
            )
        self._patcher.apply()

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._patcher is not None:
            self._patcher.remove()
