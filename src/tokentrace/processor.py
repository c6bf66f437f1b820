"""``TokenEfficiencySpanProcessor``: put ms/token on every GenAI span, for any exporter.

The SDK hands processors an ended, read-only span, so the processor wraps the
processor that does the exporting (usually a ``BatchSpanProcessor``) and forwards a
copy of each GenAI span that carries the derived ``tokentrace.*`` attributes (see
:mod:`tokentrace.efficiency`). Because the figures are on the span itself, an OTLP
exporter to any other backend receives them too::

    provider.add_span_processor(
        TokenEfficiencySpanProcessor(BatchSpanProcessor(OTLPSpanExporter()))
    )

Spans that are not GenAI spans are forwarded untouched; unsampled spans get no
figures.

``on_end`` runs on the application's thread, at the end of every model call, so it
does as little as it can: the copy it forwards derives the figures the first time
its attributes are read — in the exporter, on the batch processor's thread. What an
exporter receives is the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.util.types import Attributes, AttributeValue

from tokentrace import attributes as A
from tokentrace.dialects import REQUEST_MODEL_KEYS, RESPONSE_MODEL_KEYS, normalize
from tokentrace.efficiency import derive

# A span can only be a GenAI span (``GenAIFacts.is_genai``: an operation or a model)
# if it has one of these keys; spans with none of them skip the processor outright.
# Keep in step with how tokentrace.dialects reads the operation and the model.
_GENAI_MARKERS = frozenset(
    (
        A.GEN_AI_OPERATION_NAME,
        A.LLM_REQUEST_TYPE,
        A.OPENINFERENCE_SPAN_KIND,
        *REQUEST_MODEL_KEYS,
        *RESPONSE_MODEL_KEYS,
    )
)


def plain_attributes(attributes: Attributes) -> Mapping[str, Any]:
    """``attributes`` as a plain ``dict`` where that costs nothing; read-only use.

    An ended span's ``BoundedAttributes`` is immutable and keeps its items in a
    ``dict``; reading that directly is many times faster than going through the
    ``Mapping`` methods it implements in Python.
    """
    if attributes is None:
        return {}
    if type(attributes) is BoundedAttributes:
        inner = getattr(attributes, "_dict", None)
        if type(inner) is dict and getattr(attributes, "_immutable", False):
            return inner
    return attributes


def _derived_attributes(span: ReadableSpan, source: Attributes) -> Attributes:
    """``source`` plus the span's ``tokentrace.*`` figures (``source`` if none apply).

    Unsampled spans, and spans that are not GenAI spans, get none.
    """
    ctx = span.context
    if ctx is None or not ctx.trace_flags.sampled:
        return source
    attrs = plain_attributes(source)
    facts = normalize(attrs)
    if not facts.is_genai:
        return source
    start, end = span.start_time, span.end_time
    duration_ms = (end - start) / 1e6 if start is not None and end is not None else None
    extra = derive(facts, attrs, duration_ms).as_attributes()
    if not extra:
        return source
    merged: dict[str, AttributeValue] = dict(attrs)
    merged.update(extra)
    return merged


class DerivingSpan(ReadableSpan):
    """A copy of an ended span whose ``tokentrace.*`` figures are added on first read.

    What the processor forwards for a GenAI span. It keeps ``ReadableSpan``'s fields
    as they were (the exporter reads them directly, see
    :func:`tokentrace.exporter.spans.span_data`).

    ``ReadableSpan`` keeps its attributes in ``_attributes``, which everything that
    reads them goes through (``attributes``, ``dropped_attributes``, ``to_json``).
    Here that name is a property: the instance's own ``_attributes`` entry keeps the
    attributes the span ended with, and the first read derives, caches and returns
    them merged with the figures. The result is the same whichever thread reads first.
    """

    @property
    def _attributes(self) -> Attributes:
        state = self.__dict__
        merged: Attributes | None = state.get(_MERGED)
        if merged is None:
            merged = state[_MERGED] = _derived_attributes(self, state["_attributes"])
        return merged

    @_attributes.setter
    def _attributes(self, value: Attributes) -> None:
        self.__dict__["_attributes"] = value
        self.__dict__.pop(_MERGED, None)

    @property
    def source_attributes(self) -> Attributes:
        """The attributes the span ended with, without the derived figures."""
        source: Attributes = self.__dict__["_attributes"]
        return source


_MERGED = "_tokentrace_merged_attributes"


def _deriving_copy(span: ReadableSpan) -> ReadableSpan:
    # A shallow copy is an order of magnitude cheaper than ReadableSpan.__init__ and
    # keeps every field (events, links, dropped counts) exactly as the SDK set it.
    copy = DerivingSpan.__new__(DerivingSpan)
    state = copy.__dict__ = span.__dict__.copy()
    _lighten(state)
    return copy


def _lighten(state: dict[str, Any]) -> None:
    """Swap the live span's containers in ``state`` for plain ones with the same content.

    The copy waits in the batch processor's queue, at times by the hundred thousand,
    and the containers a live span needs (a lock each, deques, a bound method) are
    what CPython's cyclic garbage collector then walks on every full collection: in
    ``bench/bench_export.py`` that cost more than exporting the spans. The swap keeps
    what a reader sees — a container is kept as it is when the SDK dropped items
    from it, so ``dropped_*`` stays right — and halves the objects left to collect.
    """
    state.pop("_lock", None)
    state.pop("_record_end_metrics", None)
    for key in ("_events", "_links"):
        items = state.get(key)
        if type(items) is BoundedList and not items.dropped:
            # Its deque, read without the lock: an ended span no longer changes.
            # None of them: the shared empty tuple.
            state[key] = tuple(items._dq)  # type: ignore[attr-defined]
    attributes = state.get("_attributes")
    if type(attributes) is BoundedAttributes and not attributes.dropped:
        inner = getattr(attributes, "_dict", None)
        if type(inner) is dict and getattr(attributes, "_immutable", False):
            state["_attributes"] = inner


def underived_attributes(span: ReadableSpan) -> Attributes | None:
    """The attributes ``span`` ended with, if it is a copy this processor forwarded.

    ``None`` for any other span. For a store that derives the same figures itself
    (:func:`tokentrace.exporter.spans.span_row`), to avoid deriving them twice.
    """
    if isinstance(span, DerivingSpan):
        return span.source_attributes
    return None


class TokenEfficiencySpanProcessor(SpanProcessor):
    """Derives the efficiency figures of spans ending and forwards to ``delegate``."""

    def __init__(self, delegate: SpanProcessor) -> None:
        self._delegate = delegate

    @property
    def delegate(self) -> SpanProcessor:
        return self._delegate

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._delegate.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        # This runs on the application's thread for every span: one cheap check here,
        # the rest (sampled? GenAI? which figures?) when the copy's attributes are read.
        attrs = span._attributes
        if attrs is not None and not _GENAI_MARKERS.isdisjoint(attrs):
            span = _deriving_copy(span)
        self._delegate.on_end(span)

    def shutdown(self) -> None:
        self._delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._delegate.force_flush(timeout_millis)
