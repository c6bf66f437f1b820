"""What the three instrumentors share: deferred patching, one call's span and clock.

* :class:`Patcher` wraps a library's methods with ``wrapt`` as soon as the library is
  imported (at once when it already is), so instrumenting an installed but unused
  library costs nothing: importing ``transformers`` (and torch) takes seconds.
  ``remove()`` puts every original back, found in the class ``__dict__`` so that a
  ``classmethod`` is restored as the descriptor it was.
* :class:`Call` is one instrumented call: its span, a monotonic clock started with it,
  the stream timing (first and last chunk) and what the response said, recorded as
  span attributes and GenAI metrics when the call ends. It records raw facts only:
  ms/token is derived later, by the processor or the store.
* Telemetry never changes the caller's outcome: helpers called after the wrapped
  call go through :func:`guard`, which logs and swallows its own failures.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from contextvars import Token
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import get_meter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from tokentrace import attributes as A
from tokentrace.instrumentation._metrics import GenAIMetrics

if TYPE_CHECKING:
    # The upstream module is marked `# type: ignore`, so mypy sees no class there:
    # this stand-in declares the part of its interface tokentrace relies on.
    class BaseInstrumentor:
        is_instrumented_by_opentelemetry: bool

        def instrument(self, **kwargs: Any) -> None: ...
        def uninstrument(self, **kwargs: Any) -> None: ...
        def instrumentation_dependencies(self) -> Collection[str]: ...
        def _instrument(self, **kwargs: Any) -> None: ...
        def _uninstrument(self, **kwargs: Any) -> None: ...

else:
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

__all__ = [
    "BaseInstrumentor",
    "Call",
    "Patcher",
    "Telemetry",
    "capture_content_default",
    "chat_messages",
    "guard",
    "mark_error",
    "telemetry_from",
    "text_messages",
    "to_json",
]

_log = logging.getLogger(__name__)

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
VERSION = "0.1.0"

# The attributes GenAI metrics are broken down by (low cardinality only).
_METRIC_KEYS = (
    A.GEN_AI_OPERATION_NAME,
    A.GEN_AI_PROVIDER_NAME,
    A.GEN_AI_REQUEST_MODEL,
    A.SERVER_ADDRESS,
    A.SERVER_PORT,
)
_NS_PER_S = 1e9
_NS_PER_MS = 1e6

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
T = TypeVar("T")


def capture_content_default() -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true``."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What a wrapper records with: tracer, metrics, and the content switch."""

    tracer: Tracer
    metrics: GenAIMetrics
    capture_content: bool


def telemetry_from(scope: str, kwargs: Mapping[str, Any]) -> Telemetry:
    """Tracer and meter from ``BaseInstrumentor.instrument`` keyword arguments."""
    tracer = trace.get_tracer(
        scope, VERSION, tracer_provider=kwargs.get("tracer_provider"), schema_url=SCHEMA_URL
    )
    meter = get_meter(
        scope, VERSION, meter_provider=kwargs.get("meter_provider"), schema_url=SCHEMA_URL
    )
    capture = kwargs.get("capture_content")
    return Telemetry(
        tracer=tracer,
        metrics=GenAIMetrics(meter),
        capture_content=capture_content_default() if capture is None else bool(capture),
    )


def guard(func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``func(*args, **kwargs)``, or None (logged) if telemetry code itself fails."""
    try:
        return func(*args, **kwargs)
    except Exception:  # noqa: BLE001 - telemetry must never break the caller
        _log.debug(
            "tokentrace instrumentation failed in %s",
            getattr(func, "__name__", func),
            exc_info=True,
        )
        return None


def mark_error(span: Span, exc: BaseException) -> None:
    """Record ``exc`` on ``span``: status ERROR, ``error.type`` = the class name."""
    if span.is_recording():
        span.set_attribute(A.ERROR_TYPE, type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__qualname__))


def to_json(value: Any) -> str:
    """Content as the JSON string the conventions allow on spans."""
    return json.dumps(value, ensure_ascii=False, default=str)


def text_messages(role: str, text: str, finish_reason: str | None = None) -> str:
    """One message in the GenAI message JSON shape (role + text part)."""
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return to_json([message])


def chat_messages(messages: Any) -> str:
    """Chat messages (dicts or objects with ``role``/``content``) as GenAI JSON."""
    out = []
    for message in messages or ():
        get = message.get if isinstance(message, Mapping) else functools.partial(getattr, message)
        content = get("content", None)
        parts = [{"type": "text", "content": content}] if isinstance(content, str) else content
        out.append({"role": get("role", None), "parts": parts or []})
    return to_json(out)


class Call:
    """One instrumented call: a span, its clock, and what it produced.

    Attributes learnt from the response go into :attr:`attrs` and reach the span in
    one ``set_attributes`` when the call finishes (one lock, not one per key).
    """

    __slots__ = (
        "_ended",
        "_t0",
        "attrs",
        "chunks",
        "decode_s",
        "first_ns",
        "input_tokens",
        "last_ns",
        "metric_attrs",
        "output_tokens",
        "recording",
        "span",
        "start_ns",
        "telemetry",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        name: str,
        kind: SpanKind,
        attrs: dict[str, Any],
        parent: otel_context.Context | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter_ns()
        self.span = telemetry.tracer.start_span(
            name, context=parent, kind=kind, attributes=attrs, start_time=self.start_ns
        )
        self.recording = self.span.is_recording()
        self.attrs: dict[str, Any] = {}
        self.metric_attrs = {key: attrs[key] for key in _METRIC_KEYS if key in attrs}
        self.first_ns: int | None = None
        self.last_ns = 0
        self.chunks = 0
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.decode_s: float | None = None  # server-reported time per output token
        self._ended = False

    def attach(self) -> Token[otel_context.Context]:
        """Make the span current (for the library's own nested spans)."""
        return otel_context.attach(trace.set_span_in_context(self.span))

    @staticmethod
    def detach(token: Token[otel_context.Context]) -> None:
        otel_context.detach(token)

    def tick(self) -> None:
        """A stream chunk arrived now."""
        now = time.perf_counter_ns()
        if self.first_ns is None:
            self.first_ns = now
        self.last_ns = now
        self.chunks += 1

    def set_tokens(self, input_tokens: int | None, output_tokens: int | None) -> None:
        if input_tokens is not None:
            self.input_tokens = input_tokens
            self.attrs[A.GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens
            self.attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = output_tokens

    def set_response_model(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.attrs[A.GEN_AI_RESPONSE_MODEL] = model
            self.metric_attrs[A.GEN_AI_RESPONSE_MODEL] = model

    def fail(self, exc: BaseException) -> None:
        """End the call as failed by ``exc`` (which the caller then re-raises)."""
        guard(mark_error, self.span, exc)
        self.metric_attrs[A.ERROR_TYPE] = type(exc).__qualname__
        self.finish(failed=True)

    def finish(self, failed: bool = False) -> None:
        """End the span and record the metrics; a second call does nothing."""
        if self._ended:
            return
        self._ended = True
        duration_s = (time.perf_counter_ns() - self._t0) / _NS_PER_S
        # The hot path of every call: plain try blocks rather than guard() calls.
        try:
            ttft_s = self._stream_timing() if self.first_ns is not None else None
            if self.recording and self.attrs:
                self.span.set_attributes(self.attrs)
            self.telemetry.metrics.record(
                self.metric_attrs,
                duration_s=duration_s,
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                ttft_s=ttft_s,
                tpot_s=self._time_per_output_token(),
                failed=failed,
            )
        except Exception:  # noqa: BLE001 - telemetry must never break the caller
            _log.debug("tokentrace: recording a call failed", exc_info=True)
        self.span.end()

    def _stream_timing(self) -> float | None:
        """Time to first chunk (s); the stream figures go into :attr:`attrs`."""
        if self.first_ns is None:
            return None
        ttft_s = (self.first_ns - self._t0) / _NS_PER_S
        self.attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttft_s
        self.attrs[A.TT_STREAM_GENERATION_MS] = (self.last_ns - self.first_ns) / _NS_PER_MS
        self.attrs[A.TT_STREAM_CHUNKS] = self.chunks
        return ttft_s

    def _time_per_output_token(self) -> float | None:
        if self.decode_s is not None:
            return self.decode_s
        out = self.output_tokens
        if self.first_ns is None or out is None or out < 2:
            return None
        return (self.last_ns - self.first_ns) / _NS_PER_S / (out - 1)


class Patcher:
    """Wraps methods of a library's classes once the library is imported.

    Targets are ``(module, "Class.method", wrapper)``. :meth:`apply` registers a
    post-import hook per module (wrapt runs it at once for a module already
    imported); :meth:`remove` unwraps what was wrapped and disarms hooks that have
    not fired yet, so a later import wraps nothing.
    """

    def __init__(self) -> None:
        self._targets: list[tuple[str, str, Wrapper]] = []
        self._wrapped: list[tuple[type, str]] = []
        self._generation = 0
        self._lock = threading.Lock()

    def add(self, module: str, path: str, wrapper: Wrapper) -> None:
        self._targets.append((module, path, wrapper))

    def apply(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        for module in dict.fromkeys(target[0] for target in self._targets):
            hook = functools.partial(self._on_import, generation, module)
            wrapt.register_post_import_hook(hook, module)

    def _on_import(self, generation: int, name: str, module: ModuleType) -> None:
        with self._lock:
            if generation != self._generation:
                return  # uninstrumented (or re-instrumented) since this hook was set
            for target_module, path, wrapper in self._targets:
                if target_module == name:
                    self._wrap(module, path, wrapper)

    def _wrap(self, module: ModuleType, path: str, wrapper: Wrapper) -> None:
        class_name, method = path.rsplit(".", 1)
        owner = getattr(module, class_name, None)
        if not isinstance(owner, type) or method not in vars(owner):
            _log.debug("tokentrace: %s.%s not found; not instrumented", module.__name__, path)
            return
        wrapt.wrap_function_wrapper(owner, method, wrapper)
        self._wrapped.append((owner, method))

    def remove(self) -> None:
        with self._lock:
            self._generation += 1
            wrapped, self._wrapped = self._wrapped, []
        for owner, method in reversed(wrapped):
            current = vars(owner).get(method)
            if isinstance(current, wrapt.FunctionWrapper):
                setattr(owner, method, current.__wrapped__)
