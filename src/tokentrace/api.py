"""The manual API: time model loads and inferences yourself.

::

    import tokentrace

    tokentrace.configure()                       # spans → PostgreSQL (embedded by default)

    with tokentrace.model_load("llama3.2"):
        model = load_it()

    with tokentrace.inference("llama3.2", provider="ollama") as call:
        reply = model.generate(prompt)
        call.set_tokens(input=reply.prompt_tokens, output=reply.output_tokens)

Both context managers work with ``with`` and ``async with``. An exception inside
marks the span ``ERROR`` with ``error.type`` set to the exception's class and is
re-raised unchanged.

For code written against the original telemetry system, :func:`log_load_latency`
and :func:`log_thought_latency` record a span whose duration is exactly the one
given, ending now.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tokentrace import attributes as A

_TRACER = "tokentrace"


def _tracer() -> trace.Tracer:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        from tokentrace.pipeline import configure

        configure()
    return trace.get_tracer(_TRACER)


def _mark_error(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.set_attribute(A.ERROR_TYPE, type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__qualname__))


class _Timed:
    """A span scope usable with ``with`` and ``async with``."""

    def __init__(self, name: str, attributes: dict[str, Any], kind: SpanKind) -> None:
        self._name = name
        self._attributes = attributes
        self._kind = kind
        self._span: Span | None = None
        self._scope: Any = None

    @property
    def span(self) -> Span:
        if self._span is None:
            raise RuntimeError("the span starts when the `with` block is entered")
        return self._span

    def __enter__(self) -> _Timed:
        self._span = _tracer().start_span(self._name, kind=self._kind, attributes=self._attributes)
        self._scope = trace.use_span(self._span, end_on_exit=False)
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self.span
        if exc is not None:
            _mark_error(span, exc)
        self._scope.__exit__(None, None, None)
        span.end()

    async def __aenter__(self) -> _Timed:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class ModelLoad(_Timed):
    """The scope of :func:`model_load`."""


class Inference(_Timed):
    """The scope of :func:`inference`: report what the call produced."""

    def set_tokens(self, input: int | None = None, output: int | None = None) -> None:
        """Record the call's input (prompt) and output (generated) token counts."""
        span = self.span
        if not span.is_recording():
            return
        if input is not None:
            span.set_attribute(A.GEN_AI_USAGE_INPUT_TOKENS, input)
        if output is not None:
            span.set_attribute(A.GEN_AI_USAGE_OUTPUT_TOKENS, output)

    def set_response_model(self, model: str) -> None:
        if self.span.is_recording():
            self.span.set_attribute(A.GEN_AI_RESPONSE_MODEL, model)

    def set_ttft_ms(self, ttft_ms: float) -> None:
        """Record the time to the first token, in milliseconds."""
        if self.span.is_recording():
            self.span.set_attribute(A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, ttft_ms / 1000.0)


def _base_attributes(operation: str, model: str, provider: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {A.GEN_AI_OPERATION_NAME: operation, A.GEN_AI_REQUEST_MODEL: model}
    if provider:
        attrs[A.GEN_AI_PROVIDER_NAME] = provider
    return attrs


def model_load(model: str, *, provider: str | None = None) -> ModelLoad:
    """Time a model load: a ``load_model {model}`` span."""
    return ModelLoad(
        f"{A.OP_LOAD_MODEL} {model}",
        _base_attributes(A.OP_LOAD_MODEL, model, provider),
        SpanKind.INTERNAL,
    )


def inference(model: str, *, provider: str | None = None, operation: str = A.OP_CHAT) -> Inference:
    """Time one inference call: a ``{operation} {model}`` span."""
    return Inference(
        f"{operation} {model}", _base_attributes(operation, model, provider), SpanKind.INTERNAL
    )


def _record(name: str, attrs: dict[str, Any], seconds: float, error: str | None) -> None:
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"a duration must be a non-negative number of seconds, not {seconds!r}")
    end = time.time_ns()
    span = _tracer().start_span(
        name, kind=SpanKind.INTERNAL, attributes=attrs, start_time=end - round(seconds * 1e9)
    )
    if error is not None:
        span.set_attribute(A.ERROR_TYPE, error)
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end)


def log_load_latency(model_name: str, load_time_seconds: float, success: bool = True) -> None:
    """Record a model load that took ``load_time_seconds`` and has just finished."""
    attrs = _base_attributes(A.OP_LOAD_MODEL, model_name, None)
    error = None if success else "load_failed"
    _record(f"{A.OP_LOAD_MODEL} {model_name}", attrs, load_time_seconds, error)


def log_thought_latency(
    model_name: str,
    inference_time_seconds: float,
    tokens_generated: int,
    prompt_tokens: int = 0,
) -> None:
    """Record an inference that took ``inference_time_seconds`` and has just finished."""
    attrs = _base_attributes(A.OP_CHAT, model_name, None)
    attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = tokens_generated
    attrs[A.GEN_AI_USAGE_INPUT_TOKENS] = prompt_tokens
    _record(f"{A.OP_CHAT} {model_name}", attrs, inference_time_seconds, None)
