"""Read GenAI facts from span attributes in any dialect.

Spans arrive speaking different attribute dialects: the current OpenTelemetry GenAI
conventions, their deprecated names (``gen_ai.system``, ``gen_ai.usage.prompt_tokens``),
OpenLLMetry (``llm.request.type``, ``llm.usage.total_tokens``), OpenInference
(``llm.token_count.prompt``, ``llm.model_name``) and OpenLIT (seconds-valued
``gen_ai.server.time_to_first_token``). :func:`normalize` reads each fact from the
first key present, in the priority order below, and returns one canonical
:class:`GenAIFacts`. It is pure and never raises: a value of the wrong type, a
negative, non-finite or non-integral token count reads as *missing*.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from tokentrace import attributes as A

# The largest token count we accept; anything above cannot be a real count and would
# overflow bigint arithmetic in the views.
MAX_TOKENS = 2**40

INPUT_TOKEN_KEYS = (
    A.GEN_AI_USAGE_INPUT_TOKENS,
    A.GEN_AI_USAGE_PROMPT_TOKENS,
    A.LLM_TOKEN_COUNT_PROMPT,
    A.LLM_USAGE_PROMPT_TOKENS,
)
OUTPUT_TOKEN_KEYS = (
    A.GEN_AI_USAGE_OUTPUT_TOKENS,
    A.GEN_AI_USAGE_COMPLETION_TOKENS,
    A.LLM_TOKEN_COUNT_COMPLETION,
    A.LLM_USAGE_COMPLETION_TOKENS,
)
CACHE_READ_KEYS = (
    A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS_OLD,
    A.LLM_TOKEN_COUNT_CACHE_READ,
    A.GEN_AI_USAGE_PROMPT_DETAILS_CACHED,
)
REASONING_KEYS = (
    A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    A.GEN_AI_USAGE_REASONING_TOKENS,
    A.LLM_USAGE_REASONING_TOKENS,
    A.LLM_TOKEN_COUNT_REASONING,
)
PROVIDER_KEYS = (A.GEN_AI_PROVIDER_NAME, A.GEN_AI_SYSTEM, A.LLM_PROVIDER, A.LLM_SYSTEM, A.LLM_VENDOR)
REQUEST_MODEL_KEYS = (
    A.GEN_AI_REQUEST_MODEL,
    A.LLM_REQUEST_MODEL_NAME,
    A.LLM_MODEL_NAME,
    A.LLM_REQUEST_MODEL,
)
RESPONSE_MODEL_KEYS = (A.GEN_AI_RESPONSE_MODEL, A.LLM_RESPONSE_MODEL_NAME, A.LLM_RESPONSE_MODEL)
STREAM_KEYS = (A.GEN_AI_REQUEST_STREAM, A.GEN_AI_IS_STREAMING, A.LLM_IS_STREAMING)

# OpenLLMetry's llm.request.type values -> gen_ai.operation.name
_LLM_REQUEST_TYPES = {
    "chat": A.OP_CHAT,
    "completion": A.OP_TEXT_COMPLETION,
    "embedding": A.OP_EMBEDDINGS,
    "embeddings": A.OP_EMBEDDINGS,
    "rerank": "rerank",
}
_PROVIDER_ALIASES = {
    "az.ai.inference": "azure.ai.inference",
    "az.ai.openai": "azure.ai.openai",
    "mistralai": "mistral_ai",
}
_OPENINFERENCE_KINDS = {"LLM": A.OP_CHAT, "EMBEDDING": A.OP_EMBEDDINGS}
# Operations a span name can show: the GenAI conventions name a span
# "{gen_ai.operation.name} {model}" ("chat llama3"), OpenLLMetry "{vendor}.{method}"
# ("ollama.chat", "openai.completion", "ChatOllama.chat").
_NAMED_OPERATIONS = {
    A.OP_CHAT: A.OP_CHAT,
    A.OP_TEXT_COMPLETION: A.OP_TEXT_COMPLETION,
    A.OP_EMBEDDINGS: A.OP_EMBEDDINGS,
    A.OP_GENERATE_CONTENT: A.OP_GENERATE_CONTENT,
    "completion": A.OP_TEXT_COMPLETION,
    "completions": A.OP_TEXT_COMPLETION,
    "generate": A.OP_TEXT_COMPLETION,
    "embedding": A.OP_EMBEDDINGS,
    "embed": A.OP_EMBEDDINGS,
    "rerank": "rerank",
}


class GenAIFacts(NamedTuple):
    """The canonical reading of one span's GenAI attributes (None = not known).

    A named tuple rather than a frozen dataclass: one is built per span stored, and a
    frozen dataclass's ``__init__`` costs several times as much (bench/RESULTS.md).
    """

    operation: str | None = None
    provider: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    reasoning_tokens: int | None = None
    stream: bool | None = None
    ttft_s: float | None = None

    @property
    def model(self) -> str | None:
        """The model that answered, else the model asked for."""
        return self.response_model or self.request_model

    @property
    def is_genai(self) -> bool:
        return self.operation is not None or self.model is not None


def as_token_count(value: Any) -> int | None:
    """A token count, or None when the value cannot be one.

    Accepts ints, integral floats and decimal strings ("12"), because some SDKs and
    OTLP/JSON send counts that way. Negative, non-finite, fractional, boolean and
    absurdly large values are treated as missing rather than guessed at.
    """
    if type(value) is int:  # the common case, decided without the checks below
        return value if 0 <= value <= MAX_TOKENS else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        n = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text.isdecimal() or len(text) > 15:  # isdigit() passes "²", which int() refuses
            return None
        n = int(text)
    else:
        return None
    return n if 0 <= n <= MAX_TOKENS else None


_INF = math.inf


def as_number(value: Any) -> float | None:
    """A finite, non-negative float, or None."""
    if value is None:  # most timing attributes are absent: decided first
        return None
    if type(value) is float:
        return value if 0.0 <= value < _INF else None  # NaN fails both comparisons
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            f = float(value)
        except OverflowError:  # an int beyond float's range
            return None
    elif isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) and f >= 0 else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


# The helpers below take ``attrs.get`` rather than ``attrs``: normalize runs once per
# span stored (twice with the processor), and one bound method serves every lookup.
# A missing key and a None value read the same (as missing) in every one of them.
_Get = Callable[[str], Any]


def _first(get: _Get, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = get(key)
        if value is not None:
            return value
    return None


def _first_count(get: _Get, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = get(key)
        if value is None:
            continue
        if type(value) is int:  # as_token_count's common case, without the call
            if 0 <= value <= MAX_TOKENS:
                return value
            continue
        count = as_token_count(value)
        if count is not None:
            return count
    return None


def _first_text(get: _Get, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = get(key)
        if isinstance(value, str):  # _text, inlined
            value = value.strip()
            if value:
                return value
    return None


def _operation(get: _Get) -> str | None:
    op = _text(get(A.GEN_AI_OPERATION_NAME))
    if op is not None:
        return op
    request_type = _text(get(A.LLM_REQUEST_TYPE))
    if request_type is not None:
        return _LLM_REQUEST_TYPES.get(request_type.lower(), request_type.lower())
    kind = _text(get(A.OPENINFERENCE_SPAN_KIND))
    if kind is not None:
        return _OPENINFERENCE_KINDS.get(kind.upper())
    return None


def _provider(get: _Get) -> str | None:
    provider = _first_text(get, PROVIDER_KEYS)
    if provider is None:
        return None
    provider = provider.lower()
    return _PROVIDER_ALIASES.get(provider, provider)


def _stream(get: _Get) -> bool | None:
    value = _first(get, STREAM_KEYS)
    if value is None:  # the common case: no stream attribute at all
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _ttft_s(get: _Get, stream: bool | None) -> float | None:
    ttft = as_number(get(A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK))
    if ttft is not None:
        return ttft
    # OpenLIT writes 0.0 here for non-streamed calls: that is "unknown", not instant.
    openlit = as_number(get(A.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN))
    if openlit is not None and openlit > 0 and stream is not False:
        return openlit
    return None


def infer_operation(facts: GenAIFacts, span_name: str) -> str | None:
    """The operation of a GenAI span whose attributes name none, or None.

    :func:`normalize` already reads ``gen_ai.operation.name``, OpenLLMetry's
    ``llm.request.type`` and OpenInference's span kind. A span with none of them (the
    deprecated GenAI dialect, hand-written spans, older SDKs) is still a call; this
    reads its operation from its name (``chat llama3``, ``ollama.chat``,
    ``openai.completion``), and else calls a span that reports output tokens a
    ``chat``: it generated tokens, and chat is what today's APIs call that. A span
    with neither stays without an operation (and still counts as a call).
    """
    if facts.operation is not None or not facts.is_genai:
        return facts.operation
    first_word = span_name.split(" ", 1)[0]
    last_part = first_word.rsplit(".", 1)[-1].lower()
    named = _NAMED_OPERATIONS.get(last_part)
    if named is not None:
        return named
    return A.OP_CHAT if facts.output_tokens is not None else None


def normalize(attrs: Mapping[str, Any]) -> GenAIFacts:
    """Read the canonical GenAI facts from attributes in any supported dialect."""
    get = attrs.get
    stream = _stream(get)
    # GenAIFacts(...) by position, without the Python frame of its __new__: this runs
    # once per span stored, and keyword construction made normalize() and derive() a
    # third slower (bench/RESULTS.md, "The pure core, plainly written"). The values
    # are in field order.
    return _new_facts(
        GenAIFacts,
        (
            _operation(get),
            _provider(get),
            _first_text(get, REQUEST_MODEL_KEYS),
            _first_text(get, RESPONSE_MODEL_KEYS),
            _first_count(get, INPUT_TOKEN_KEYS),
            _first_count(get, OUTPUT_TOKEN_KEYS),
            _first_count(get, CACHE_READ_KEYS),
            _first_count(get, REASONING_KEYS),
            stream,
            _ttft_s(get, stream),
        ),
    )


_new_facts = tuple.__new__
