"""Whether a call gets a span of its own: suppressed, borrowed, or new.

* ``suppress_instrumentation()`` (OpenTelemetry's) turns instrumentations off in a
  context: :func:`enabled_context` is None there, and the call is not recorded.
* Beside other instrumentations of the same client (OpenLLMetry, OpenLIT,
  OpenInference; see ``docs/instrumentation.md``) a call makes one span, not two.
  While tokentrace records a call it sets OpenLLMetry's context key
  ``suppress_language_model_instrumentation`` (:data:`LM_SUPPRESS_KEY`, to
  :data:`SUPPRESSED_BY_US`, see :func:`suppress_below`), which OpenLLMetry's
  wrappers below it honour by skipping the call.
* When the call is made inside another instrumentation's span of the same call,
  :func:`host_span` finds it, and the call *borrows* it: no span of its own,
  tokentrace's facts added to that span (see
  :meth:`tokentrace.instrumentation.call.Call._lend`).

The context is looked up once per call (:func:`enabled_context`), for these checks
and as the span's parent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.trace import Span

from tokentrace import attributes as A
from tokentrace.dialects import REQUEST_MODEL_KEYS

__all__ = [
    "LM_SUPPRESS_KEY",
    "SUPPRESSED_BY_US",
    "attributes_of",
    "enabled_context",
    "host_span",
    "suppress_below",
]

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
below it (see :meth:`tokentrace.instrumentation.patching.Patcher.restack`) then
knows the call is recorded already."""


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
