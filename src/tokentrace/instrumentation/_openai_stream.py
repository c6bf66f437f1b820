"""Reading OpenAI usage, and following an OpenAI stream to its end.

``create(stream=True)`` returns an ``openai.Stream`` (``AsyncStream``) once the
response headers are in. The instrumentation hands back a transparent proxy of it
(``isinstance`` and every attribute still work) whose iteration notes each chunk's
arrival and what it carried, and which ends the span when the stream is exhausted,
closed, or left by a ``with`` block. Per chunk this costs a clock read and a few
attribute reads; see ``bench/RESULTS.md``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, TypeGuard

import wrapt

from tokentrace import attributes as A
from tokentrace.instrumentation.call import Call
from tokentrace.instrumentation.content import text_messages
from tokentrace.instrumentation.fields import field, fields
from tokentrace.instrumentation.guard import guard

_log = logging.getLogger(__name__)


def number(value: Any) -> TypeGuard[int | float]:
    """A real int or float (``bool`` excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_usage(call: Call, operation: str, usage: Any) -> None:
    """Token counts from an OpenAI ``usage`` object (response or final chunk)."""
    # fields(), not getattr(): usage objects lack some of these (embeddings have no
    # completion count) and pydantic is slow to say so.
    get = fields(usage)
    prompt = get("prompt_tokens")
    completion = get("completion_tokens")
    if prompt == 0 and operation != A.OP_EMBEDDINGS:
        # Ollama's /v1 reports 0 prompt tokens on a prompt-cache hit (ollama#5370):
        # record that the prompt was cached rather than a false 0.
        prompt = None
        call.attrs[A.TT_PROMPT_CACHED] = True
    call.set_tokens(prompt, completion)
    if not call.recording:
        return
    cached = field(get("prompt_tokens_details"), "cached_tokens")
    if isinstance(cached, int):
        call.attrs[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = cached
    reasoning = field(get("completion_tokens_details"), "reasoning_tokens")
    if isinstance(reasoning, int):
        call.attrs[A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = reasoning


def record_llamacpp_timings(call: Call, timings: Any) -> None:
    """llama.cpp's ``timings`` (ms) kept as server timings (ns) when they match the usage.

    ``prompt_n`` counts only the prompt tokens evaluated, not those served from the
    cache, so the prompt time is kept only when it covers every input token.
    """
    if not isinstance(timings, Mapping):
        return
    pairs = (
        ("predicted_n", "predicted_ms", call.output_tokens, A.TT_SERVER_EVAL_NS),
        ("prompt_n", "prompt_ms", call.input_tokens, A.TT_SERVER_PROMPT_EVAL_NS),
    )
    for count_key, ms_key, tokens, attr in pairs:
        count, ms = timings.get(count_key), timings.get(ms_key)
        if tokens and count == tokens and number(ms) and ms > 0:
            call.attrs[attr] = round(ms * 1e6)
            if attr == A.TT_SERVER_EVAL_NS:
                call.decode_s = ms / 1e3 / tokens


def _untimed(now_ns: int) -> None:
    """The clock of a stream not yet followed: times nothing."""


if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt before 2.0 has no subscriptable ObjectProxy
    _Proxy = wrapt.ObjectProxy


class StreamState:
    """What the chunks of one stream said, gathered as they pass."""

    __slots__ = (
        "chat",
        "content_chunks",
        "done",
        "extras",
        "model",
        "operation",
        "reasons",
        "response_id",
        "text",
        "tick",
        "usage",
    )  # fmt: skip

    def __init__(self, operation: str, capture_content: bool) -> None:
        self.operation = operation
        self.chat = operation == A.OP_CHAT
        self.text: list[str] | None = [] if capture_content else None
        self.usage: Any = None
        self.content_chunks = 0
        self.reasons: list[str] = []
        self.model: Any = None
        self.response_id: Any = None
        self.extras: list[Any] = []  # chunks that may carry llama.cpp `timings`
        self.done = False
        self.tick: Callable[[int], None] = _untimed

    def follow(self, call: Call) -> None:
        """Note each chunk's arrival on ``call`` (its :meth:`~Call.ticker`) from now on."""
        self.tick = call.ticker()

    def on_chunk(self, chunk: Any) -> None:
        """``chunk`` arrived now: its time (see :meth:`follow`), and what it carried.

        The per-chunk path, so it is one method: the reading of each choice is
        written out here rather than called.
        """
        self.tick(perf_counter_ns())
        try:
            if self.model is None:
                self.model, self.response_id = chunk.model, chunk.id
            usage = chunk.usage
            if usage is not None:
                self.usage = usage
                self.extras.append(chunk)
            for choice in chunk.choices:
                if self.chat:
                    delta = choice.delta
                    text = delta.content
                    if text or delta.tool_calls:  # content, or a tool call: produced
                        self.content_chunks += 1
                        if text and self.text is not None:
                            self.text.append(text)
                else:
                    text = choice.text
                    if text:
                        self.content_chunks += 1
                        if self.text is not None:
                            self.text.append(text)
                if choice.finish_reason:
                    self.reasons.append(choice.finish_reason)
                    self.extras.append(chunk)
        except Exception:  # noqa: BLE001 - a chunk we cannot read is not the caller's problem
            _log.debug("tokentrace: unreadable stream chunk %r", type(chunk), exc_info=True)

    def finish(self, call: Call) -> None:
        """Record what the stream said and end the call (once)."""
        if self.done:
            return
        self.done = True
        guard(self._record, call)
        call.finish()

    def _record(self, call: Call) -> None:
        call.set_response_model(self.model)
        reported = self._llamacpp_output_tokens()
        if self.usage is not None:
            record_usage(call, self.operation, self.usage)
        elif reported is not None:
            call.set_tokens(None, reported)
        elif self.content_chunks:
            call.set_tokens(None, self.content_chunks)
            call.attrs[A.TT_TOKEN_SOURCE] = A.SOURCE_ESTIMATED
        if not call.recording:
            return
        if isinstance(self.response_id, str):
            call.attrs[A.GEN_AI_RESPONSE_ID] = self.response_id
        if self.reasons:
            call.attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = self.reasons
        for chunk in self.extras:
            record_llamacpp_timings(call, field(chunk, "timings"))
        if self.text is not None:
            reason = self.reasons[0] if self.reasons else None
            text = "".join(self.text)
            call.attrs[A.GEN_AI_OUTPUT_MESSAGES] = text_messages("assistant", text, reason)

    def _llamacpp_output_tokens(self) -> int | None:
        # llama.cpp reports the generated count in `timings` even without a usage chunk.
        for chunk in self.extras:
            timings = field(chunk, "timings")
            if isinstance(timings, Mapping) and isinstance(timings.get("predicted_n"), int):
                return int(timings["predicted_n"])
        return None

    def fail(self, call: Call, exc: BaseException) -> None:
        if not self.done:
            self.done = True
            call.fail(exc)


class _TracedStream(_Proxy):
    """An ``openai.Stream`` that ends its span when it ends."""

    def __init__(self, stream: Any, call: Call, state: StreamState) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_state = state

    def __iter__(self) -> Iterator[Any]:
        return self._self_iterate()

    def _self_iterate(self) -> Iterator[Any]:
        call, state = self._self_call, self._self_state
        on_chunk = state.on_chunk
        try:
            for chunk in self.__wrapped__:
                on_chunk(chunk)
                yield chunk
        except GeneratorExit:
            state.finish(call)  # the caller stopped iterating early
            raise
        except BaseException as exc:
            state.fail(call, exc)
            raise
        state.finish(call)

    def __next__(self) -> Any:
        try:
            chunk = self.__wrapped__.__next__()
        except StopIteration:
            self._self_state.finish(self._self_call)
            raise
        except BaseException as exc:
            self._self_state.fail(self._self_call, exc)
            raise
        self._self_state.on_chunk(chunk)
        return chunk

    def __enter__(self) -> _TracedStream:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_state.finish(self._self_call)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_state.finish(self._self_call)

    def __del__(self) -> None:
        # A stream dropped without being read to the end or closed still ends its span.
        guard(self._self_state.finish, self._self_call)


class _TracedAsyncStream(_Proxy):
    """An ``openai.AsyncStream`` that ends its span when it ends."""

    def __init__(self, stream: Any, call: Call, state: StreamState) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_state = state

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._self_aiterate()

    async def _self_aiterate(self) -> AsyncIterator[Any]:
        call, state = self._self_call, self._self_state
        on_chunk = state.on_chunk
        try:
            async for chunk in self.__wrapped__:
                on_chunk(chunk)
                yield chunk
        except GeneratorExit:
            state.finish(call)
            raise
        except BaseException as exc:
            state.fail(call, exc)
            raise
        state.finish(call)

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_state.finish(self._self_call)
            raise
        except BaseException as exc:
            self._self_state.fail(self._self_call, exc)
            raise
        self._self_state.on_chunk(chunk)
        return chunk

    async def __aenter__(self) -> _TracedAsyncStream:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_state.finish(self._self_call)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_state.finish(self._self_call)

    def __del__(self) -> None:
        guard(self._self_state.finish, self._self_call)


def traced_stream(stream: Any, call: Call, state: StreamState) -> Any:
    """``stream`` (an ``openai.Stream``), followed to its end by ``state`` for ``call``."""
    state.follow(call)
    return _TracedStream(stream, call, state)


def traced_async_stream(stream: Any, call: Call, state: StreamState) -> Any:
    """``stream`` (an ``openai.AsyncStream``), followed to its end by ``state`` for ``call``."""
    state.follow(call)
    return _TracedAsyncStream(stream, call, state)
