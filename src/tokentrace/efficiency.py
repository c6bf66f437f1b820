"""Latency per token: the figures tokentrace exists for, derived by pure functions.

For an inference span (any operation but ``load_model``):

* ``inference_ms`` — the span's wall time **minus any model load** the server
  reported inside it (Ollama's ``load_duration``).
* ``ms_per_token`` — ``inference_ms / output_tokens``: the efficiency score.
* ``decode_ms_per_token`` — the server's own decode time per output token
  (``eval_duration / eval_count``) where reported; otherwise, for streams,
  first chunk → last chunk over ``output_tokens - 1``.
* ``prefill_ms_per_token`` — ``prompt_eval_duration / prompt_eval_count``.
* ``ttft_ms`` — time to the first token or chunk of a stream.
* ``token_source`` — ``reported``, ``estimated`` (the instrumentation counted
  chunks) or ``missing``.

For a ``load_model`` span, ``load_ms`` is its duration.

Every figure is ``None`` when it cannot be known: zero or missing tokens, a span
that ends before it starts, a negative or non-numeric timing. Nothing here raises
or returns infinity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from tokentrace import attributes as A
from tokentrace.dialects import GenAIFacts, as_number

_NS_PER_MS = 1_000_000.0
_INF = float("inf")
_VALID_SOURCES = frozenset((A.SOURCE_REPORTED, A.SOURCE_ESTIMATED, A.SOURCE_MISSING))


class Efficiency(NamedTuple):
    """Derived figures for one span; None means unknown.

    A named tuple rather than a frozen dataclass: one is built per span stored.
    """

    inference_ms: float | None = None
    ms_per_token: float | None = None
    prefill_ms_per_token: float | None = None
    decode_ms_per_token: float | None = None
    ttft_ms: float | None = None
    load_ms: float | None = None
    token_source: str | None = None

    def as_attributes(self) -> dict[str, Any]:
        """The figures as ``tokentrace.*`` span attributes, unknowns left out."""
        out: dict[str, Any] = {}
        self.add_to(out)
        return out

    def add_to(self, attributes: dict[str, Any]) -> None:
        """Set the known figures as ``tokentrace.*`` attributes of ``attributes``."""
        # One test per figure, in field order (as _ATTRIBUTE_KEYS): cheaper than a loop
        # over zip(), and this runs once per span stored.
        if self.inference_ms is not None:
            attributes[A.TT_INFERENCE_MS] = self.inference_ms
        if self.ms_per_token is not None:
            attributes[A.TT_MS_PER_TOKEN] = self.ms_per_token
        if self.prefill_ms_per_token is not None:
            attributes[A.TT_PREFILL_MS_PER_TOKEN] = self.prefill_ms_per_token
        if self.decode_ms_per_token is not None:
            attributes[A.TT_DECODE_MS_PER_TOKEN] = self.decode_ms_per_token
        if self.ttft_ms is not None:
            attributes[A.TT_TTFT_MS] = self.ttft_ms
        if self.load_ms is not None:
            attributes[A.TT_LOAD_MS] = self.load_ms
        if self.token_source is not None:
            attributes[A.TT_TOKEN_SOURCE] = self.token_source


# In field order.
_ATTRIBUTE_KEYS = (
    A.TT_INFERENCE_MS,
    A.TT_MS_PER_TOKEN,
    A.TT_PREFILL_MS_PER_TOKEN,
    A.TT_DECODE_MS_PER_TOKEN,
    A.TT_TTFT_MS,
    A.TT_LOAD_MS,
    A.TT_TOKEN_SOURCE,
)
_NOTHING = Efficiency()


def per_token(total_ms: float | None, tokens: int | None) -> float | None:
    """``total_ms / tokens``, or None for unknown, zero or negative inputs."""
    if total_ms is None or tokens is None or tokens <= 0 or total_ms < 0:
        return None
    return total_ms / tokens


def _ns_to_ms(value: Any) -> float | None:
    ns = as_number(value)
    return None if ns is None else ns / _NS_PER_MS


def _token_source(declared: Any, output_tokens: int | None) -> str:
    if isinstance(declared, str) and declared in _VALID_SOURCES:
        return declared
    return A.SOURCE_REPORTED if output_tokens is not None else A.SOURCE_MISSING


def _decode(get: Callable[[str], Any], output_tokens: int | None) -> float | None:
    eval_ns = get(A.TT_SERVER_EVAL_NS)
    if eval_ns is not None:  # as_number(None) is None: most spans skip the call
        server = per_token(_ns_to_ms(eval_ns), output_tokens)
        if server is not None:
            return server
    generation = get(A.TT_STREAM_GENERATION_MS)
    if output_tokens is None or output_tokens < 2 or generation is None:
        return None
    return per_token(as_number(generation), output_tokens - 1)


def _ttft_ms(explicit: Any, ttft_s: float | None) -> float | None:
    if explicit is not None:
        ms = as_number(explicit)
        if ms is not None:
            return ms
    if ttft_s is None:
        return None
    ms = ttft_s * 1000.0
    return ms if ms < _INF else None  # a finite number of seconds can overflow in ms


def derive(facts: GenAIFacts, attrs: Mapping[str, Any], duration_ms: float | None) -> Efficiency:
    """Derive the efficiency figures of one span.

    ``duration_ms`` is the span's wall time (None or negative when its end is
    before its start). Spans that are not GenAI spans derive nothing.
    """
    operation = facts.operation
    output_tokens = facts.output_tokens
    if operation is None and output_tokens is None and facts.model is None:
        return _NOTHING  # not facts.is_genai, and no output tokens
    wall_ms = duration_ms if duration_ms is not None and duration_ms >= 0 else None
    if operation == A.OP_LOAD_MODEL:
        return Efficiency(load_ms=wall_ms)
    get = attrs.get
    # Absent timings are the common case; as_number(None) is None, so the calls are skipped.
    load_ns = get(A.TT_SERVER_LOAD_NS)
    load_ms = None if load_ns is None else _ns_to_ms(load_ns)
    inference_ms = None if wall_ms is None else max(wall_ms - (load_ms or 0.0), 0.0)
    prompt_ns = get(A.TT_SERVER_PROMPT_EVAL_NS)
    # Efficiency(...) by position, without the Python frame of its __new__: keyword
    # construction made derive() a third slower (bench/RESULTS.md, "The pure core,
    # plainly written"). The values are in field order.
    return _new_efficiency(
        Efficiency,
        (
            inference_ms,
            per_token(inference_ms, output_tokens),
            None if prompt_ns is None else per_token(_ns_to_ms(prompt_ns), facts.input_tokens),
            _decode(get, output_tokens),
            _ttft_ms(get(A.TT_TTFT_MS), facts.ttft_s),
            load_ms or None,
            _token_source(get(A.TT_TOKEN_SOURCE), output_tokens),
        ),
    )


_new_efficiency = tuple.__new__
