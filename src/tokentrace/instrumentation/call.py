"""One instrumented call: its span, a monotonic clock started with it, what it produced.

:class:`Call` (started by :func:`start_call` for a client call) records the stream
timing (first and last chunk, as :meth:`Call.ticker` notes them) and what the
response said, as span attributes and GenAI metrics when the call ends. It records
raw facts only: ms/token is derived later, by the processor or the store.

A call never changes the caller's outcome: an exception of the wrapped call
propagates unchanged, and a failure of tokentrace's own recording is logged and
swallowed. Beside another instrumentation's span of the same call the call
*borrows* that span (see :mod:`tokentrace.instrumentation.suppression`).

This code runs on every model call, so it keeps work off that path: a call starts
from a shared :class:`~tokentrace.instrumentation.caches.Shape`, attributes
learnt from the response reach the span in one ``set_attributes``, and a stream
chunk costs a clock read and a list append.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextvars import Token
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tokentrace import attributes as A
from tokentrace.dialects import INPUT_TOKEN_KEYS, OUTPUT_TOKEN_KEYS
from tokentrace.instrumentation._metrics import TokenAttrs
from tokentrace.instrumentation.caches import Shape
from tokentrace.instrumentation.guard import guard
from tokentrace.instrumentation.recording import RecordingTools
from tokentrace.instrumentation.suppression import attributes_of, suppress_below

__all__ = ["Call", "mark_error", "start_call"]

_log = logging.getLogger(__name__)

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


def mark_error(span: Span, exc: BaseException) -> None:
    """Record ``exc`` on ``span``: status ERROR, ``error.type`` = the class name."""
    if span.is_recording():
        span.set_attribute(A.ERROR_TYPE, type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__qualname__))


_OWN_PREFIX = "tokentrace."
# Lent to no other instrumentation's span: content is its owner's to record or not.
_NEVER_LENT = frozenset((A.GEN_AI_INPUT_MESSAGES, A.GEN_AI_OUTPUT_MESSAGES))


class Call:
    """One instrumented call: a span, its clock, and what it produced.

    Used as a context manager around the wrapped call: ``with call:`` makes the span
    current (so the library's own nested spans, e.g. an HTTP client's, are its
    children) and ends the call as failed if the wrapped call raises, leaving the
    exception to propagate unchanged. :meth:`end` then records the response and
    ends the call.

    Attributes learnt from the response go into :attr:`attrs` and reach the span in
    one ``set_attributes`` when the call finishes (one lock, not one per key).

    While the wrapped call runs, OpenLLMetry's suppression key
    (:data:`~tokentrace.instrumentation.suppression.LM_SUPPRESS_KEY`) is set in its
    context, so that an OpenLLMetry wrapper below tokentrace's skips the call.

    With a ``host`` (another instrumentation's span of this call, see
    :func:`~tokentrace.instrumentation.suppression.host_span`) the call *borrows*
    that span instead of starting one (:attr:`owned` is False): it never ends it,
    nor marks it failed (its owner does both), records no metrics (its owner records its own: the call would be
    counted twice) and, when the call succeeds, adds to it what tokentrace knows
    that the span does not say (see :meth:`_lend`).
    """

    __slots__ = (
        "_ended",
        "_parent",
        "_t0",
        "_token",
        "attrs",
        "decode_s",
        "input_tokens",
        "metric_attrs",
        "output_tokens",
        "owned",
        "recording",
        "shape",
        "span",
        "start_ns",
        "ticks",
        "token_attrs",
        "tools",
    )

    def __init__(
        self,
        tools: RecordingTools,
        name: str,
        kind: SpanKind,
        attrs: Mapping[str, Any],
        parent: otel_context.Context | None = None,
        metric_attrs: Mapping[str, Any] | None = None,
        host: Span | None = None,
    ) -> None:
        """Start the span with ``attrs`` (which the SDK copies; never mutated here).

        ``metric_attrs`` are the metrics' attributes when the caller has them at hand
        (they are never mutated either: a change makes a new dict); else they are
        picked from ``attrs``. ``parent`` is the context the call was made in, when
        the caller already looked it up (``None``: the current one). ``host``: the
        span to borrow instead of starting one (see the class docs).
        """
        self.tools = tools
        self._parent = parent
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter_ns()
        if host is None:
            self.span = tools.tracer.start_span(
                name, context=parent, kind=kind, attributes=attrs, start_time=self.start_ns
            )
            self.owned = True
        else:
            self.span = host
            self.owned = False
        self.recording = self.span.is_recording()
        self.attrs: dict[str, Any] = {}
        self.metric_attrs: Mapping[str, Any] = (
            {key: attrs[key] for key in _METRIC_KEYS if key in attrs}
            if metric_attrs is None
            else metric_attrs
        )
        self.ticks: list[int] | None = None  # a stream's chunk arrivals (see ticker)
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.decode_s: float | None = None  # server-reported time per output token
        self._ended = False
        self._token: Token[otel_context.Context] | None = None
        self.shape: Shape | None = None  # set by start_call
        # token_attrs(metric_attrs) when built once for many calls (see Shape), else None.
        self.token_attrs: TokenAttrs | None = None

    def __enter__(self) -> Call:
        """Make the span current (for the library's own nested spans), and tell the
        instrumentations below that the call is traced (see :func:`suppress_below`)."""
        parent = self._parent
        if self.owned:
            parent = trace.set_span_in_context(self.span, parent)
        elif parent is None:
            parent = otel_context.get_current()
        self._token = suppress_below(parent)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Returns None: an exception of the wrapped call propagates unchanged.
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if exc is not None:
            self.fail(exc)

    def end(self, record: Callable[..., object], *args: Any) -> None:
        """``record(self, *args)`` (what the response said), then :meth:`finish`.

        A failure of ``record`` is logged and does not reach the caller.
        """
        try:
            record(self, *args)
        except Exception:  # noqa: BLE001 - telemetry must never break the caller
            _log.debug("tokentrace: recording a response failed in %s", record, exc_info=True)
        self.finish()

    def ticker(self) -> Callable[[int], None]:
        """What a stream calls with ``perf_counter_ns()`` as each of its chunks arrives.

        The call's stream timing (time to first chunk, first to last chunk, chunk
        count) is read from those times when it finishes. Per chunk this is one C
        call, a list's ``append``, and no Python frame: the per-chunk path of every
        stream. The cost is memory: about 40 bytes per chunk until the call ends.
        """
        ticks: list[int] = []
        self.ticks = ticks
        return ticks.append

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
            shape = self.shape
            if shape is not None and self.metric_attrs is shape.metric_attrs:
                self.metric_attrs, self.token_attrs = shape.for_response_model(model)
            else:
                # A new dict: the one given at start may be shared (see __init__).
                self.metric_attrs = {**self.metric_attrs, A.GEN_AI_RESPONSE_MODEL: model}

    def fail(self, exc: BaseException) -> None:
        """End the call as failed by ``exc`` (which the caller then re-raises)."""
        if self.owned:  # a borrowed span's owner records the exception itself
            guard(mark_error, self.span, exc)
        self.metric_attrs = {**self.metric_attrs, A.ERROR_TYPE: type(exc).__qualname__}
        self.token_attrs = None
        self.finish(failed=True)

    def finish(self, failed: bool = False) -> None:
        """End the span and record the metrics; a second call does nothing."""
        if self._ended:
            return
        self._ended = True
        duration_s = (time.perf_counter_ns() - self._t0) / _NS_PER_S
        # The hot path of every call: plain try blocks rather than guard() calls.
        try:
            ticks = self.ticks
            ttft_s: float | None = None
            tpot_s = self.decode_s
            if ticks:  # a stream: its timing, and tpot from it if need be
                first_ns, last_ns = ticks[0], ticks[-1]
                ttft_s = (first_ns - self._t0) / _NS_PER_S
                attrs = self.attrs
                attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttft_s
                attrs[A.TT_STREAM_GENERATION_MS] = (last_ns - first_ns) / _NS_PER_MS
                attrs[A.TT_STREAM_CHUNKS] = len(ticks)
                out = self.output_tokens
                if tpot_s is None and out is not None and out >= 2:
                    tpot_s = (last_ns - first_ns) / _NS_PER_S / (out - 1)
            if not self.owned:
                if self.recording and not failed:
                    self._lend()
                return
            if self.recording and self.attrs:
                self.span.set_attributes(self.attrs)
            self.tools.metrics.record(
                self.metric_attrs,
                duration_s,
                self.input_tokens,
                self.output_tokens,
                ttft_s,
                tpot_s,
                failed,
                self.token_attrs,
            )
        except Exception:  # noqa: BLE001 - telemetry must never break the caller
            _log.debug("tokentrace: recording a call failed", exc_info=True)
            if not self.owned:
                return
        self.span.end()

    def _lend(self) -> None:
        """Add tokentrace's facts to the borrowed span, keeping what it already says.

        Added: every ``tokentrace.*`` attribute (server timings, stream timing,
        ``prompt_cached``), ``tokentrace.token_source``, and each other attribute the
        span lacks: a token count only when it has none in any dialect, the
        response model, finish reasons, time to first chunk. Never added: message
        content (the span's owner has its own content policy). The processor then
        derives ms/token on the span when it ends, as on tokentrace's own.
        """
        span = self.span
        if not span.is_recording():  # its owner ended it already
            return
        get = attributes_of(span)
        if get is None:
            return
        lent: dict[str, Any] = {}
        for key, value in self.attrs.items():
            if key.startswith(_OWN_PREFIX) or (key not in _NEVER_LENT and get(key) is None):
                lent[key] = value
        source = lent.get(A.TT_TOKEN_SOURCE)
        if any(get(key) is not None for key in INPUT_TOKEN_KEYS):
            lent.pop(A.GEN_AI_USAGE_INPUT_TOKENS, None)
        if any(get(key) is not None for key in OUTPUT_TOKEN_KEYS):
            lent.pop(A.GEN_AI_USAGE_OUTPUT_TOKENS, None)
            source = A.SOURCE_REPORTED  # the span's own count, not an estimate of ours
        if source is None:
            source = A.SOURCE_REPORTED if self.output_tokens is not None else A.SOURCE_MISSING
        lent[A.TT_TOKEN_SOURCE] = source
        span.set_attributes(lent)


def start_call(
    tools: RecordingTools, shape: Shape, parent: otel_context.Context, host: Span | None = None
) -> Call:
    """A client call's :class:`Call` (kind ``CLIENT``) as ``shape`` says, in ``parent``;
    borrowing ``host`` when given (see
    :func:`~tokentrace.instrumentation.suppression.host_span`)."""
    call = Call(tools, shape.name, SpanKind.CLIENT, shape.attrs, parent, shape.metric_attrs, host)
    call.shape = shape
    return call
