"""The GenAI client metrics, as histograms with the conventions' bucket boundaries.

The SDK's default histogram buckets (0, 5, 10, … 10000) are made for milliseconds
and put every GenAI duration, which the conventions give in seconds, into the first
bucket. Each instrument therefore carries the boundaries the GenAI semantic
conventions (v1.41) advise, via ``explicit_bucket_boundaries_advisory``.

With no ``MeterProvider`` configured the meter is a no-op and recording costs a
function call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.metrics import Histogram, Meter

from tokentrace import attributes as A

TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"

TOKEN_BUCKETS: tuple[float, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144,
    1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

TokenAttrs = tuple[Mapping[str, Any], Mapping[str, Any]]
"""The attributes of an input and of an output ``gen_ai.client.token.usage`` point."""


def token_attrs(attrs: Mapping[str, Any]) -> TokenAttrs:
    """``attrs`` with ``gen_ai.token.type`` = ``input``, and with ``output``."""
    return (
        {**attrs, A.GEN_AI_TOKEN_TYPE: "input"},
        {**attrs, A.GEN_AI_TOKEN_TYPE: "output"},
    )


def _histogram(
    meter: Meter, name: str, unit: str, doc: str, buckets: tuple[float, ...]
) -> Histogram:
    return meter.create_histogram(
        name, unit=unit, description=doc, explicit_bucket_boundaries_advisory=list(buckets)
    )


class GenAIMetrics:
    """The four GenAI histograms tokentrace's instrumentations record."""

    def __init__(self, meter: Meter) -> None:
        self.token_usage = _histogram(
            meter, TOKEN_USAGE, "{token}", "Number of input and output tokens used.", TOKEN_BUCKETS
        )
        self.duration = _histogram(
            meter, OPERATION_DURATION, "s", "GenAI operation duration.", DURATION_BUCKETS
        )
        self.time_per_output_token = _histogram(
            meter,
            TIME_PER_OUTPUT_TOKEN,
            "s",
            "Time per output token generated after the first one.",
            TIME_PER_OUTPUT_TOKEN_BUCKETS,
        )
        self.time_to_first_token = _histogram(
            meter,
            TIME_TO_FIRST_TOKEN,
            "s",
            "Time to generate the first token.",
            TIME_TO_FIRST_TOKEN_BUCKETS,
        )

    def record(
        self,
        attrs: Mapping[str, Any],
        duration_s: float,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        ttft_s: float | None = None,
        tpot_s: float | None = None,
        failed: bool = False,
        typed: TokenAttrs | None = None,
    ) -> None:
        """Record one finished call; token and latency figures only on success.

        ``typed`` is :func:`token_attrs` of ``attrs`` when the caller has it at hand
        (built once for many calls); else it is built here if tokens are recorded.
        Called once per call, positionally (keyword passing costs on this path).
        """
        self.duration.record(duration_s, attrs)
        if failed:
            return
        if input_tokens is not None or output_tokens is not None:
            if typed is None:
                typed = token_attrs(attrs)
            if input_tokens is not None:
                self.token_usage.record(input_tokens, typed[0])
            if output_tokens is not None:
                self.token_usage.record(output_tokens, typed[1])
        if ttft_s is not None:
            self.time_to_first_token.record(ttft_s, attrs)
        if tpot_s is not None:
            self.time_per_output_token.record(tpot_s, attrs)
