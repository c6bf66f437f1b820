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
  call go through :func:`guard` (or :meth:`Call.end`), which log and swallow their
  own failures.
* Beside other instrumentations of the same client (OpenLLMetry, OpenLIT,
  OpenInference; see ``docs/instrumentation.md``) a call makes one span, not two.
  While tokentrace records a call it sets OpenLLMetry's context key
  ``suppress_language_model_instrumentation`` (:data:`LM_SUPPRESS_KEY`), which
  OpenLLMetry's wrappers below it honour by skipping the call. When the call is
  made inside another instrumentation's span of the same call, :func:`host_span`
  finds it and the :class:`Call` *borrows* it: no span of its own, tokentrace's
  facts added to that span (see :meth:`Call._lend`). A :class:`Patcher` made with
  ``outermost=True`` keeps its wrappers above any applied later (see
  :meth:`Patcher.restack`), for instrumentations whose span a wrapper below them
  cannot see.
* This code runs on every model call, so it keeps work off that path: the context
  is looked up once per call (:func:`enabled_context`), what depends only on the
  server is computed once per client URL (:class:`Servers`), what a call starts
  with once per operation, model and server (:class:`Shape`), request details
  are read only when the span records, and response fields are read without
  pydantic's slow path for absent attributes (:func:`field`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from contextvars import Token
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import wrapt
from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry import trace
from opentelemetry.metrics import get_meter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from tokentrace import attributes as A
from tokentrace._version import __version__
from tokentrace.dialects import INPUT_TOKEN_KEYS, OUTPUT_TOKEN_KEYS, REQUEST_MODEL_KEYS
from tokentrace.instrumentation._metrics import GenAIMetrics, TokenAttrs, token_attrs

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
    "LM_SUPPRESS_KEY",
    "SUPPRESSED_BY_US",
    "BaseInstrumentor",
    "Call",
    "Patcher",
    "Server",
    "Servers",
    "Shape",
    "Telemetry",
    "attributes_of",
    "base_url",
    "capture_content_default",
    "chat_messages",
    "enabled_context",
    "field",
    "fields",
    "guard",
    "host_span",
    "mark_error",
    "start_call",
    "suppress_below",
    "telemetry_from",
    "text_messages",
    "to_json",
]

_log = logging.getLogger(__name__)

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
VERSION = __version__

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


# The keys by which ``suppress_instrumentation()`` turns instrumentations off (the
# second, a plain string, is what older code sets). Read here directly so that a
# call looks the current context up once, for this check and as its span's parent.
_SUPPRESS_KEY = _SUPPRESS_INSTRUMENTATION_KEY
_SUPPRESS_KEY_OLD = "suppress_instrumentation"


def enabled_context() -> otel_context.Context | None:
    """The current context, or None when instrumentation is suppressed in it.

    Same test as ``opentelemetry.instrumentation.utils.is_instrumentation_enabled``.
    """
    ctx = otel_context.get_current()
    if ctx.get(_SUPPRESS_KEY) or ctx.get(_SUPPRESS_KEY_OLD):
        return None
    return ctx


LM_SUPPRESS_KEY = "suppress_language_model_instrumentation"
"""OpenLLMetry's context key for "this model call is already traced above".

``SUPPRESS_LANGUAGE_MODEL_INSTRUMENTATION_KEY`` of ``opentelemetry-semantic-conventions-ai``:
a plain string used as the key, read with ``context.get_value(key)`` and tested for
truth. OpenLLMetry's client instrumentors (Ollama, OpenAI, …) skip a call made while
it is set; its LangChain callback handler sets it under the LLM span it makes.
"""


class _Ours:
    """The (truthy) value tokentrace sets :data:`LM_SUPPRESS_KEY` to."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "tokentrace"


SUPPRESSED_BY_US: Any = _Ours()
"""The key's value while a tokentrace wrapper runs a call: a wrapper of tokentrace's
below it (see :meth:`Patcher.restack`) then knows the call is recorded already."""


def suppress_below(parent: otel_context.Context) -> Token[otel_context.Context]:
    """Attach ``parent`` with :data:`LM_SUPPRESS_KEY` set by tokentrace; detach the token
    when the wrapped call returns."""
    return otel_context.attach(otel_context.set_value(LM_SUPPRESS_KEY, SUPPRESSED_BY_US, parent))


# What kind of call a span is, from its operation in each dialect tokentrace reads:
# "generation" (chat, completion: tokens out) or "embeddings".
_GENERATION = "generation"
_EMBEDDINGS = "embeddings"
_FAMILIES = {
    A.OP_CHAT: _GENERATION,
    A.OP_TEXT_COMPLETION: _GENERATION,
    A.OP_GENERATE_CONTENT: _GENERATION,
    A.OP_EMBEDDINGS: _EMBEDDINGS,
}
_REQUEST_TYPE_FAMILIES = {  # OpenLLMetry's llm.request.type
    "chat": _GENERATION,
    "completion": _GENERATION,
    "embedding": _EMBEDDINGS,
    "embeddings": _EMBEDDINGS,
}
_SPAN_KIND_FAMILIES = {"LLM": _GENERATION, "EMBEDDING": _EMBEDDINGS}  # OpenInference


def attributes_of(span: Any) -> Callable[[str], Any] | None:
    """``get`` of a live span's attributes: its dict's own ``get`` for an SDK span."""
    bounded = getattr(span, "_attributes", None)
    inner = getattr(bounded, "_dict", None)
    if type(inner) is dict:
        return inner.get
    attrs = getattr(span, "attributes", None)
    return attrs.get if isinstance(attrs, Mapping) else None


def _family(get: Callable[[str], Any]) -> str | None:
    operation = get(A.GEN_AI_OPERATION_NAME)
    if operation is not None:
        return _FAMILIES.get(operation)
    request_type = get(A.LLM_REQUEST_TYPE)
    if request_type is not None:
        return _REQUEST_TYPE_FAMILIES.get(request_type)
    kind = get(A.OPENINFERENCE_SPAN_KIND)
    return None if kind is None else _SPAN_KIND_FAMILIES.get(kind)


def host_span(ctx: otel_context.Context, operation: str, model: str) -> Span | None:
    """The current span, when it is another instrumentation's span of this very call.

    That is: it records; its operation (``gen_ai.operation.name``, OpenLLMetry's
    ``llm.request.type`` or OpenInference's span kind) is of the same kind as
    ``operation`` (chat and completion alike generate tokens; embeddings are
    apart); its request model, in any dialect, is ``model``; and no call has
    lent it tokentrace's facts yet (it has no ``tokentrace.token_source``). Only
    the current span is looked at, never its ancestors: a span in between means
    the GenAI span above is not this call's. A few dict reads, and only when the
    current span records.
    """
    span = trace.get_current_span(ctx)
    if not span.is_recording():
        return None
    get = attributes_of(span)
    if get is None:
        return None
    family = _FAMILIES.get(operation)
    if family is None or _family(get) != family or get(A.TT_TOKEN_SOURCE) is not None:
        return None
    for key in REQUEST_MODEL_KEYS:
        value = get(key)
        if value is not None:
            return span if value == model else None
    return None


def field(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)``, cheap for pydantic models when ``name`` is absent.

    A pydantic model answers a missing attribute through its Python ``__getattr__``,
    which raises: several µs per miss. Its fields are in ``__dict__`` and, for models
    that allow extra fields (``openai``'s), the extras in ``__pydantic_extra__``.
    """
    if obj is None:  # an absent nested object (e.g. usage details): the common case
        return None
    values = getattr(obj, "__dict__", None)
    if values is not None and name in values:
        return values[name]
    extra = getattr(obj, "__pydantic_extra__", None)
    if type(extra) is dict:
        return extra.get(name)
    return getattr(obj, name, None)


def fields(obj: Any) -> Callable[[str], Any]:
    """``functools.partial(field, obj)``, as one dict's ``get`` where it can be.

    For a pydantic model that keeps extra fields (``openai``'s) :func:`field` reads
    ``__dict__``, then ``__pydantic_extra__``, never the class: one merged dict says
    the same, at a fraction of the cost when several fields are read.
    """
    values = getattr(obj, "__dict__", None)
    extra = getattr(obj, "__pydantic_extra__", None)
    if type(values) is dict and type(extra) is dict:
        return {**extra, **values}.get if extra else values.get
    return functools.partial(field, obj)


class Shape:
    """What every call of one operation on one model at one server starts with.

    The span's name and start attributes, the metrics' attributes (those less
    ``gen_ai.request.stream``), and, per response model, the metrics' attributes
    with it: built once, shared by the calls, never mutated.
    """

    __slots__ = ("_responses", "attrs", "metric_attrs", "name")

    _MAX = 64

    def __init__(
        self, operation: str, provider: str, model: str, server: Mapping[str, Any], stream: bool
    ) -> None:
        self.name = f"{operation} {model}"
        attrs = {
            A.GEN_AI_OPERATION_NAME: operation,
            A.GEN_AI_PROVIDER_NAME: provider,
            A.GEN_AI_REQUEST_MODEL: model,
            **server,
        }
        self.metric_attrs: Mapping[str, Any] = attrs
        self.attrs: Mapping[str, Any] = (
            {**attrs, A.GEN_AI_REQUEST_STREAM: True} if stream else attrs
        )
        self._responses: dict[str, tuple[Mapping[str, Any], TokenAttrs]] = {}

    def for_response_model(self, model: str) -> tuple[Mapping[str, Any], TokenAttrs]:
        """:attr:`metric_attrs` plus ``gen_ai.response.model`` = ``model``, and their
        :func:`~tokentrace.instrumentation._metrics.token_attrs`."""
        hit = self._responses.get(model)
        if hit is None:
            if len(self._responses) >= self._MAX:
                self._responses.clear()
            attrs = {**self.metric_attrs, A.GEN_AI_RESPONSE_MODEL: model}
            hit = self._responses[model] = (attrs, token_attrs(attrs))
        return hit


class Server:
    """One server (a client's base URL): its ``server.*`` attributes, provider and shapes."""

    __slots__ = ("_shapes", "attrs", "provider")

    _MAX = 256

    def __init__(self, provider: str, attrs: Mapping[str, Any]) -> None:
        self.provider = provider
        self.attrs = attrs  # server.address, server.port (and the provider, for OpenAI)
        self._shapes: dict[tuple[str, str, bool], Shape] = {}

    def shape(self, operation: str, model: str, stream: bool) -> Shape:
        """The :class:`Shape` of a call of ``operation`` on ``model`` at this server."""
        key = (operation, model, stream)
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) >= self._MAX:
                self._shapes.clear()
            shape = self._shapes[key] = Shape(operation, self.provider, model, self.attrs, stream)
        return shape


class Servers:
    """A :class:`Server` per base URL, computed once per URL object.

    Clients keep one immutable ``httpx.URL`` as their base URL; reading its host and
    port and choosing a provider once per URL object, not once per call, keeps that
    off the hot path. Entries are keyed by ``id`` and hold the URL itself, so an id
    cannot be reused while its entry lives; the cache is emptied when it grows past
    a few dozen URLs.
    """

    __slots__ = ("_cache", "_compute")

    _MAX = 64

    def __init__(self, compute: Callable[[Any], Server]) -> None:
        self._compute = compute
        self._cache: dict[int, tuple[Any, Server]] = {}

    def __call__(self, url: Any) -> Server:
        """The server at ``url``: shared, its attributes never to be mutated."""
        hit = self._cache.get(id(url))
        if hit is not None and hit[0] is url:
            return hit[1]
        server = self._compute(url)
        if len(self._cache) >= self._MAX:
            self._cache.clear()
        self._cache[id(url)] = (url, server)
        return server


def base_url(client: Any) -> Any:
    """An HTTP client's base URL (an ``httpx.URL``).

    Read from the instance when it is there (``httpx`` keeps it as ``_base_url``
    behind its ``base_url`` property; in recent ``openai`` releases that property
    imports a module on every read), else through the property.
    """
    state = getattr(client, "__dict__", None)
    url = state.get("_base_url") if state is not None else None
    return url if url is not None else client.base_url


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

    While the wrapped call runs, :data:`LM_SUPPRESS_KEY` is set in its context, so
    that an OpenLLMetry wrapper below tokentrace's skips the call.

    With a ``host`` (another instrumentation's span of this call, see
    :func:`host_span`) the call *borrows* that span instead of starting one
    (:attr:`owned` is False): it never ends it, nor marks it failed (its owner
    does both), records no metrics (its owner records its own: the call would be
    counted twice) and, when the call succeeds, adds to it what tokentrace knows
    that the span does not say (see :meth:`_lend`).
    """

    __slots__ = (
        "_ended",
        "_parent",
        "_t0",
        "_token",
        "attrs",
        "chunks",
        "decode_s",
        "first_ns",
        "input_tokens",
        "last_ns",
        "metric_attrs",
        "output_tokens",
        "owned",
        "recording",
        "shape",
        "span",
        "start_ns",
        "telemetry",
        "token_attrs",
    )

    def __init__(
        self,
        telemetry: Telemetry,
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
        self.telemetry = telemetry
        self._parent = parent
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter_ns()
        if host is None:
            self.span = telemetry.tracer.start_span(
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
        self.first_ns: int | None = None
        self.last_ns = 0
        self.chunks = 0
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
        instrumentations below that the call is traced (:data:`LM_SUPPRESS_KEY`)."""
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
            first_ns = self.first_ns
            ttft_s: float | None = None
            tpot_s = self.decode_s
            if first_ns is not None:  # a stream: its timing, and tpot from it if need be
                ttft_s = (first_ns - self._t0) / _NS_PER_S
                attrs = self.attrs
                attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttft_s
                attrs[A.TT_STREAM_GENERATION_MS] = (self.last_ns - first_ns) / _NS_PER_MS
                attrs[A.TT_STREAM_CHUNKS] = self.chunks
                out = self.output_tokens
                if tpot_s is None and out is not None and out >= 2:
                    tpot_s = (self.last_ns - first_ns) / _NS_PER_S / (out - 1)
            if not self.owned:
                if self.recording and not failed:
                    self._lend()
                return
            if self.recording and self.attrs:
                self.span.set_attributes(self.attrs)
            self.telemetry.metrics.record(
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
    telemetry: Telemetry, shape: Shape, parent: otel_context.Context, host: Span | None = None
) -> Call:
    """A client call's :class:`Call` (kind ``CLIENT``) as ``shape`` says, in ``parent``;
    borrowing ``host`` when given (see :func:`host_span`)."""
    call = Call(
        telemetry, shape.name, SpanKind.CLIENT, shape.attrs, parent, shape.metric_attrs, host
    )
    call.shape = shape
    return call


class _Patch:
    """One method tokentrace wrapped: where, with what, and the wrapper object itself."""

    __slots__ = ("method", "owner", "wrapper", "wrapping")

    def __init__(self, owner: type, method: str, wrapper: Wrapper, wrapping: Any) -> None:
        self.owner = owner
        self.method = method
        self.wrapper = wrapper
        self.wrapping = wrapping  # the FunctionWrapper, wherever it now is in the chain


def _unlink(owner: type, method: str, wrapping: Any) -> bool:
    """Take ``wrapping`` out of the chain of wrappers on ``owner.method``; False if absent.

    On top, the attribute is set back to what it wraps; below another wrapper, that
    wrapper is made to wrap what ``wrapping`` wrapped (wrapt lets ``__wrapped__`` be
    set), so the wrappers applied after tokentrace's stay as they are.
    """
    node: Any = vars(owner).get(method)
    if node is wrapping:
        setattr(owner, method, wrapping.__wrapped__)
        return True
    while isinstance(node, wrapt.FunctionWrapper):
        inner: Any = node.__wrapped__
        if inner is wrapping:
            # wrapt proxies accept a new __wrapped__ (typed as read-only in its stubs)
            setattr(node, "__wrapped__", wrapping.__wrapped__)  # noqa: B010
            return True
        node = inner
    return False


class Patcher:
    """Wraps methods of a library's classes once the library is imported.

    Targets are ``(module, "Class.method", wrapper)``. :meth:`apply` registers a
    post-import hook per module (wrapt runs it at once for a module already
    imported); :meth:`remove` unwraps what was wrapped, wherever other wrappers
    have put it in the chain since, and disarms hooks that have not fired yet, so a
    later import wraps nothing.

    ``outermost=True``: after any ``BaseInstrumentor.instrument()`` (in process, or
    by ``opentelemetry-instrument``) the wrappers are put back on top of any
    applied over them since (:meth:`restack`), so tokentrace's wrapper runs first
    whatever the order of instrumenting.
    """

    def __init__(self, outermost: bool = False) -> None:
        self._targets: list[tuple[str, str, Wrapper]] = []
        self._wrapped: list[_Patch] = []
        self._generation = 0
        self._lock = threading.Lock()
        self._outermost = outermost

    def add(self, module: str, path: str, wrapper: Wrapper) -> None:
        self._targets.append((module, path, wrapper))

    def apply(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        if self._outermost:
            _keep_outermost(self)
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
        self._wrapped.append(_Patch(owner, method, wrapper, vars(owner)[method]))

    def restack(self) -> None:
        """Put each wrapper back on top of the wrappers applied over it since.

        Another instrumentation that wraps the same method after tokentrace runs
        first. OpenLLMetry's Ollama wrapper then starts its span without making it
        current, so tokentrace's below it cannot see it (and records a second span);
        on top, tokentrace sets :data:`LM_SUPPRESS_KEY` and OpenLLMetry's skips.
        The wrapper is taken out of its place in the chain (:func:`_unlink`) and
        wrapped around the whole chain afresh.
        """
        with self._lock:
            for patch in self._wrapped:
                owner, method = patch.owner, patch.method
                if vars(owner).get(method) is patch.wrapping:
                    continue  # on top still: the common case
                if not _unlink(owner, method, patch.wrapping):
                    continue  # no longer there: someone put the original back
                patch.wrapping = wrapt.FunctionWrapper(vars(owner)[method], patch.wrapper)
                setattr(owner, method, patch.wrapping)

    def remove(self) -> None:
        with self._lock:
            self._generation += 1
            wrapped, self._wrapped = self._wrapped, []
        _OUTERMOST.discard(self)
        for patch in reversed(wrapped):
            _unlink(patch.owner, patch.method, patch.wrapping)


# Patchers that keep their wrappers on top (see Patcher.restack), and whether
# BaseInstrumentor.instrument is wrapped to restack them after every instrument().
_OUTERMOST: weakref.WeakSet[Patcher] = weakref.WeakSet()
_restacking = False
_restacking_lock = threading.Lock()


def _keep_outermost(patcher: Patcher) -> None:
    global _restacking
    _OUTERMOST.add(patcher)
    with _restacking_lock:
        if _restacking:
            return
        _restacking = True
    from opentelemetry.instrumentation import instrumentor

    # Every instrumentation of the OpenTelemetry kind (OpenLLMetry's, OpenLIT's,
    # OpenInference's, and what opentelemetry-instrument loads) patches inside
    # BaseInstrumentor.instrument(): just after it is the moment to restack, before
    # any call is made through the new wrapper. Never removed: with no patcher left
    # it only calls through.
    base = getattr(instrumentor, "BaseInstrumentor")  # noqa: B009 - untyped upstream
    wrapt.wrap_function_wrapper(base, "instrument", _restack_after)


def _restack_after(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        for patcher in list(_OUTERMOST):
            guard(patcher.restack)
