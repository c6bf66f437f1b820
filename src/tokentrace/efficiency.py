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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokentrace import attributes as A
from tokentrace.dialects import GenAIFacts, as_number

_NS_PER_MS = 1_000_000.0
_VALID_SOURCES = frozenset((A.SOURCE_REPORTED, A.SOURCE_ESTIMATED, A.SOURCE_MISSING))


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Derived figures for one span; None means unknown."""

    inference_ms: float | None = None
    ms_per_token: float | None = None
    prefill_ms_per_token: float | None = None
    decode_ms_per_token: float | None = None
    ttft_ms: float | None = None
    load_ms: float | None = None
    token_source: str | None = None

    def as_attributes(self) -> dict[str, Any]:
        """The figures as ``tokentrace.*`` span attributes, unknowns left out."""
        pairs = (
            (A.TT_INFERENCE_MS, self.inference_ms),
            (A.TT_MS_PER_TOKEN, self.ms_per_token),
            (A.TT_PREFILL_MS_PER_TOKEN, self.prefill_ms_per_token),
            (A.TT_DECODE_MS_PER_TOKEN, self.decode_ms_per_token),
            (A.TT_TTFT_MS, self.ttft_ms),
            (A.TT_LOAD_MS, self.load_ms),
            (A.TT_TOKEN_SOURCE, self.token_source),
        )
        return {key: value for key, value in pairs if value is not None}


def per_token(total_ms: float | None, tokens: int | None) -> float | None:
    """``total_ms / tokens``, or None for unknown, zero or negative inputs."""
    if total_ms is None or tokens is None or tokens <= 0 or total_ms < 0:
        return None
    return total_ms / tokens


def _ns_to_ms(value: Any) -> float | None:
    ns = as_number(value)
    return None if ns is None else ns / _NS_PER_MS


def _token_source(facts: GenAIFacts, attrs: Mapping[str, Any]) -> str:
    declared = attrs.get(A.TT_TOKEN_SOURCE)
    if isinstance(declared, str) and declared in _VALID_SOURCES:
        return declared
    return A.SOURCE_REPORTED if facts.output_tokens is not None else A.SOURCE_MISSING


def _decode(facts: GenAIFacts, attrs: Mapping[str, Any]) -> float | None:
    server = per_token(_ns_to_ms(attrs.get(A.TT_SERVER_EVAL_NS)), facts.output_tokens)
    if server is not None:
        return server
    generation_ms = as_number(attrs.get(A.TT_STREAM_GENERATION_MS))
    if facts.output_tokens is None or facts.output_tokens < 2:
        return None
    return per_token(generation_ms, facts.output_tokens - 1)


def _ttft_ms(facts: GenAIFacts, attrs: Mapping[str, Any]) -> float | None:
    explicit = as_number(attrs.get(A.TT_TTFT_MS))
    if explicit is not None:
        return explicit
    return None if facts.ttft_s is None else facts.ttft_s * 1000.0


def derive(facts: GenAIFacts, attrs: Mapping[str, Any], duration_ms: float | None) -> Efficiency:
    """Derive the efficiency figures of one span.

    ``duration_ms`` is the span's wall time (None or negative when its end is
    before its start). Spans that are not GenAI spans derive nothing.
    """
    if not facts.is_genai and facts.output_tokens is None:
        return Efficiency()
    wall_ms = duration_ms if duration_ms is not None and duration_ms >= 0 else None
    if facts.operation == A.OP_LOAD_MODEL:
        return Efficiency(load_ms=wall_ms)
    load_ms = _ns_to_ms(attrs.get(A.TT_SERVER_LOAD_NS))
    inference_ms = None if wall_ms is None else max(wall_ms - (load_ms or 0.0), 0.0)
    return Efficiency(
        inference_ms=inference_ms,
        ms_per_token=per_token(inference_ms, facts.output_tokens),
        prefill_ms_per_token=per_token(
            _ns_to_ms(attrs.get(A.TT_SERVER_PROMPT_EVAL_NS)), facts.input_tokens
        ),
        decode_ms_per_token=_decode(facts, attrs),
        ttft_ms=_ttft_ms(facts, attrs),
        load_ms=load_ms or None,
        token_source=_token_source(facts, attrs),
    )
