"""Benchmark of the dispatcher's input (issue 19): tokentrace's expected latency against
LiteLLM's latency-based routing, on a simulated fleet whose truth is known.

The fleet
    ``--models`` Ollama-like models (default the five of :data:`FLEET`), each with a
    known intercept, prefill and decode ms/token, load time and keep-alive. A call's
    time is ``load (if not resident) + intercept + prefill × P + decode × O``, each part
    with its own log-normal noise (``--noise``, σ of the log, default 0.06); a resident
    model still reports a few ms of ``load_duration`` (finding its runner), as Ollama
    does. A model is resident while a call ended less than its keep-alive ago. Traffic
    is a Poisson stream (``--rate`` calls per simulated minute, default 10) spread over
    the models by fixed shares, prompts log-uniform over 16–6,000 tokens and outputs
    over 8–1,000. At ``--slow-at`` hours one model (``--slow-model``, default the one
    most often fastest) becomes 2× slower in intercept, prefill and decode.
The pipeline
    Every call becomes a span through tokentrace's real pipeline, as the Ollama
    instrumentation records one: an SDK span with the GenAI attributes and Ollama's
    server timings (``load_duration`` and the rest, ns), its start and end times set
    explicitly on the simulated clock (which ends at the wall clock's now), plus a
    ``load_model`` child span for a load ≥ 100 ms; ``TokenEfficiencySpanProcessor`` →
    ``BatchSpanProcessor`` → ``PostgresSpanExporter`` → an embedded PostgreSQL of the
    run's own. Spans are exported and flushed as the simulated clock passes their end.
Held-out requests
    Every simulated minute (``--probe-every``), ``--probes`` fresh requests are drawn
    and *not* served (they change no state and are not stored): for each, every
    model's true expected time now (noise-free, with its load if it is not resident)
    and one noisy realisation are computed, and each estimator predicts every model:

    * ``tokentrace``: :func:`tokentrace.expected.expected_latency` at the simulated
      time (``at``), one query per request for all models;
    * ``litellm per-token``: LiteLLM's ``latency-based-routing`` estimator fed the same
      calls — the mean of the last 10 response times divided by completion tokens
      (what it keeps when a response has usage, as Ollama's and OpenAI's have),
      × the request's output tokens; its pick is the lowest mean, as LiteLLM's is;
    * ``litellm mean``: the same estimator's plain mean response time (what it keeps
      for a response without usage).

    :class:`LiteLLMLatency` reimplements ``litellm/router_strategy/lowest_latency.py``
    of litellm 1.110.2 (line numbers in its docstring); ``tests/unit/test_bench_dispatch.py``
    checks it against the real ``LowestLatencyLoggingHandler`` when litellm is installed.
    An ``oracle`` row (the true expected time as the prediction) shows the floor the
    noise alone puts under the error.

Figures, per model and overall
    median absolute percentage error against the realisation (stationary: before the
    slowdown; and after it); its ratio to LiteLLM's; the fraction of requests whose
    chosen model was truly the fastest (least true expected time); warm/cold predicted
    right (against always saying "warm"); after the slowdown, the minutes of traffic
    until the estimator stops picking the slowed model for the reference request (800
    prompt, 300 output tokens, where it was fastest before and is not after) and until
    its prediction for it reaches 1.5× its level before (both must then hold to the
    end); and ``expected_latency()``'s time at ``--scale`` stored spans (default 1 M and
    10 M, loaded as ``bench/bench_reports.py`` loads them; ``--scale 0`` skips).

Usage::

    python bench/bench_dispatch.py                # 8 simulated hours, 3 seeds, scale 1 M + 10 M
    python bench/bench_dispatch.py --quick        # 3 h, 1 seed, no scale phase: a smoke run
    python bench/bench_dispatch.py --runs 5 --scale 1000000 --json out.json

Each run (seed) uses a fresh database; the table shows the median over runs.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import heapq
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UTC = dt.timezone.utc
TARGET_MAPE = 0.10
TARGET_WARM = 0.95
TARGET_SCALE_MS = 10.0
OLLAMA_DEFAULT_KEEP_ALIVE_S = 300.0
LOAD_SPAN_MIN_MS = 100.0  # the Ollama instrumentation's DEFAULT_MIN_LOAD_MS
REFERENCE_REQUEST = (800, 300)
LEVEL_FACTOR = 1.5


# --- the fleet ------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """One simulated model: its true cost (ms), keep-alive (s) and share of the traffic."""

    name: str
    intercept_ms: float
    prefill_ms: float
    decode_ms: float
    load_ms: float
    keep_alive_s: float
    share: float


# Chosen so that the fastest model depends on the request: llama3.2 decodes fastest but
# prefills slowly, phi3 prefills fastest, mistral has a large fixed cost; the rarely
# used ones are often cold; keep-alives differ from Ollama's 5-minute default.
FLEET: tuple[ModelSpec, ...] = (
    ModelSpec("llama3.2:3b", 40.0, 0.90, 8.0, 1_800.0, 300.0, 0.40),
    ModelSpec("qwen2.5:7b", 60.0, 0.35, 10.0, 3_500.0, 600.0, 0.30),
    ModelSpec("mistral:7b", 200.0, 0.20, 9.5, 3_200.0, 300.0, 0.23),
    ModelSpec("phi3:mini", 30.0, 0.12, 12.0, 1_200.0, 120.0, 0.04),
    ModelSpec("gemma2:9b", 80.0, 0.50, 14.0, 5_000.0, 300.0, 0.03),
)


@dataclass(frozen=True)
class Call:
    """One served call on the simulated clock (seconds from the start of the run)."""

    model: str
    start_s: float
    prompt_tokens: int
    output_tokens: int
    load_ms: float  # what the server reports as load_duration (a few ms when warm)
    prefill_ms: float
    decode_ms: float
    overhead_ms: float  # the intercept: neither prefill nor decode
    cold: bool
    keep_alive_s: float

    @property
    def duration_ms(self) -> float:
        return self.load_ms + self.prefill_ms + self.decode_ms + self.overhead_ms

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_ms / 1000.0


class Fleet:
    """The simulated servers: true costs, residency, and noisy calls."""

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        rng: random.Random,
        *,
        noise: float = 0.06,
        slow_model: str | None = None,
        slow_at_s: float = math.inf,
        slow_factor: float = 2.0,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.rng = rng
        self.noise = noise
        self.slow_model = slow_model
        self.slow_at_s = slow_at_s
        self.slow_factor = slow_factor
        # Per model: (start, end) of served calls, in start order.
        self._starts: dict[str, list[float]] = {s.name: [] for s in specs}
        self._ends: dict[str, list[float]] = {s.name: [] for s in specs}
        self._max_end: dict[str, list[float]] = {s.name: [] for s in specs}

    def factor(self, model: str, at_s: float) -> float:
        return self.slow_factor if model == self.slow_model and at_s >= self.slow_at_s else 1.0

    def resident(self, model: str, at_s: float) -> bool:
        """Loaded at ``at_s``: a call started by then that ended less than keep-alive ago
        (or is still running)."""
        starts = self._starts[model]
        i = bisect.bisect_right(starts, at_s)
        if i == 0:
            return False
        return self._max_end[model][i - 1] + self.specs[model].keep_alive_s > at_s

    def expected_ms(self, model: str, prompt: int, output: int, at_s: float) -> float:
        """The true expected time of a call now, noise-free, its load included if cold."""
        s = self.specs[model]
        f = self.factor(model, at_s)
        warm = f * (s.intercept_ms + s.prefill_ms * prompt + s.decode_ms * output)
        return warm + (0.0 if self.resident(model, at_s) else s.load_ms)

    def draw(
        self, model: str, prompt: int, output: int, at_s: float, rng: random.Random | None = None
    ) -> Call:
        """A noisy call of this size now, without serving it (state unchanged); ``rng``
        (default the fleet's) draws the noise."""
        r = rng or self.rng

        def noisy(value: float, sigma: float) -> float:
            return value * math.exp(r.gauss(0.0, sigma)) if sigma > 0 else value

        s = self.specs[model]
        f = self.factor(model, at_s)
        cold = not self.resident(model, at_s)
        load = noisy(s.load_ms, 2 * self.noise) if cold else r.uniform(2.0, 8.0)
        return Call(
            model=model,
            start_s=at_s,
            prompt_tokens=prompt,
            output_tokens=output,
            load_ms=load,
            prefill_ms=noisy(f * s.prefill_ms * prompt, self.noise),
            decode_ms=noisy(f * s.decode_ms * output, self.noise),
            overhead_ms=noisy(f * s.intercept_ms, 2 * self.noise),
            cold=cold,
            keep_alive_s=s.keep_alive_s,
        )

    def serve(self, model: str, prompt: int, output: int, at_s: float) -> Call:
        """A call served now: it keeps the model resident until its end + keep-alive.
        Calls must be served in start order."""
        call = self.draw(model, prompt, output, at_s)
        starts = self._starts[model]
        if starts and at_s < starts[-1]:
            raise ValueError("calls must be served in start order")
        starts.append(at_s)
        self._ends[model].append(call.end_s)
        previous = self._max_end[model][-1] if self._max_end[model] else -math.inf
        self._max_end[model].append(max(previous, call.end_s))
        return call


def request_size(rng: random.Random) -> tuple[int, int]:
    """Prompt tokens log-uniform over 16–6,000, output tokens over 8–1,000."""
    prompt = int(round(math.exp(rng.uniform(math.log(16), math.log(6_000)))))
    output = int(round(math.exp(rng.uniform(math.log(8), math.log(1_000)))))
    return prompt, output


def traffic(
    specs: Sequence[ModelSpec], rng: random.Random, rate_per_min: float, duration_s: float
) -> Iterator[tuple[float, str, int, int]]:
    """Poisson arrivals ``(start_s, model, prompt, output)`` over ``[0, duration_s)``."""
    names = [s.name for s in specs]
    weights = [s.share for s in specs]
    t = 0.0
    while True:
        t += rng.expovariate(rate_per_min / 60.0)
        if t >= duration_s:
            return
        model = rng.choices(names, weights)[0]
        prompt, output = request_size(rng)
        yield t, model, prompt, output


# --- LiteLLM's estimator ------------------------------------------------------------------
class LiteLLMLatency:
    """LiteLLM's ``latency-based-routing`` estimator, from
    ``litellm/router_strategy/lowest_latency.py`` (litellm 1.110.2), per model group:

    * ``RoutingArgs`` (lines 34–38): ``ttl`` 1 h, ``lowest_latency_buffer`` 0,
      ``max_latency_list_size`` 10.
    * On success (``async_log_success_event``, lines 315–349): the sample is
      ``end_time − start_time`` in seconds, divided by the response's
      ``completion_tokens`` when it has usage (``safe_divide_seconds``: kept undivided
      when the count is 0), else the seconds themselves.
    * Lines 366–372: the deployment's ``latency_normalized`` list keeps the last
      ``max_latency_list_size`` samples (the oldest drops first).
    * Line 397: the whole ``{model_group}_map`` is written back with ``ttl``: it
      expires ``ttl`` after the group's last success, and every list starts over.
    * Picking (``_get_available_deployments``, lines 437–535): a deployment with no
      samples yet gets ``[0]`` (line 441), so it is tried first (and, once the group
      has a map, that 0 stays in its list: see :meth:`pick`); samples that are
      negative or not finite are dropped (lines 53–60); the latency is the mean of the
      rest (lines 41–44, 495–498); the lowest wins, ties and the ``buffer`` (0 by
      default) broken at random (lines 524–535). (The tpm/rpm limits of lines 470–516
      are not set in this fleet; the time-to-first-token branch is for streams.)
    """

    def __init__(
        self, *, per_token: bool = True, max_list: int = 10, ttl_s: float = 3600.0,
        buffer: float = 0.0,
    ) -> None:
        self.per_token = per_token
        self.max_list = max_list
        self.ttl_s = ttl_s
        self.buffer = buffer
        self._samples: dict[str, deque[float]] = {}
        self._last_write_s = -math.inf

    def _expire(self, now_s: float) -> None:
        if now_s >= self._last_write_s + self.ttl_s:
            self._samples.clear()

    def observe(self, model: str, end_s: float, response_s: float, completion_tokens: int | None) -> None:
        self._expire(end_s)
        value = response_s
        if self.per_token and completion_tokens is not None and completion_tokens > 0:
            value = response_s / completion_tokens
        self._samples.setdefault(model, deque(maxlen=self.max_list)).append(value)
        self._last_write_s = end_s

    def latency(self, model: str, now_s: float) -> float:
        """The figure LiteLLM ranks by (seconds, or seconds per output token); 0 if unseen."""
        self._expire(now_s)
        samples = [x for x in self._samples.get(model, (0.0,)) if math.isfinite(x) and x >= 0]
        return sum(samples) / len(samples) if samples else 0.0

    def seen(self, model: str, now_s: float) -> bool:
        self._expire(now_s)
        return bool(self._samples.get(model))

    def expected_ms(self, model: str, output_tokens: int, now_s: float) -> float | None:
        """What this estimator implies for a request: mean × output tokens (per token), or
        the mean (plain), in ms; ``None`` before the model's first sample."""
        if not self.seen(model, now_s):
            return None
        mean = self.latency(model, now_s)
        return 1000.0 * (mean * output_tokens if self.per_token else mean)

    def pick(self, models: Sequence[str], now_s: float, rng: random.Random) -> str:
        self._expire(now_s)
        if self._samples:
            # Lines 437-443 write the ``[0]`` of a deployment not seen yet into the dict
            # the in-memory cache holds (it hands out the stored object, not a copy), so
            # once the group has a map, that 0 stays among the deployment's samples until
            # ten real ones push it out.
            for m in models:
                self._samples.setdefault(m, deque([0.0], maxlen=self.max_list))
        scored = sorted(((self.latency(m, now_s), m) for m in rng.sample(list(models), len(models))),
                        key=lambda x: x[0])
        lowest = scored[0][0]
        valid = [m for lat, m in scored if lat <= lowest + self.buffer * lowest]
        return rng.choice(valid)


# --- scoring (pure) -----------------------------------------------------------------------
@dataclass
class Probe:
    """One held-out request at one time, and what each estimator said about each model."""

    at_s: float
    prompt_tokens: int
    output_tokens: int
    true_ms: dict[str, float]
    realized_ms: dict[str, float]
    resident: dict[str, bool]
    predicted_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    picked: dict[str, str | None] = field(default_factory=dict)
    predicted_warm: dict[str, dict[str, bool | None]] = field(default_factory=dict)
    reference: bool = False


def ape(predicted: float | None, actual: float) -> float | None:
    if predicted is None or actual <= 0:
        return None
    return abs(predicted - actual) / actual


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def mape_table(
    probes: Sequence[Probe], estimator: str, models: Sequence[str], lo_s: float, hi_s: float
) -> dict[str, float | None]:
    """Median absolute percentage error against the realisation, per model and ``"all"``,
    over the probes in ``[lo_s, hi_s)`` (reference probes excluded)."""
    errors: dict[str, list[float]] = {m: [] for m in models}
    for p in probes:
        if p.reference or not lo_s <= p.at_s < hi_s:
            continue
        for m in models:
            e = ape(p.predicted_ms[estimator].get(m), p.realized_ms[m])
            if e is not None:
                errors[m].append(e)
    out: dict[str, float | None] = {m: median_or_none(errors[m]) for m in models}
    out["all"] = median_or_none([e for m in models for e in errors[m]])
    return out


def coverage(
    probes: Sequence[Probe], estimator: str, models: Sequence[str], lo_s: float, hi_s: float
) -> float | None:
    """The fraction of (probe, model) pairs the estimator gave a figure for."""
    have = total = 0
    for p in probes:
        if p.reference or not lo_s <= p.at_s < hi_s:
            continue
        for m in models:
            total += 1
            have += p.predicted_ms[estimator].get(m) is not None
    return have / total if total else None


def fastest_rate(
    probes: Sequence[Probe], estimator: str, lo_s: float, hi_s: float
) -> tuple[float | None, float | None]:
    """(fraction of probes whose pick was truly fastest, median regret of the pick:
    its true time over the fastest's, minus 1)."""
    right: list[bool] = []
    regret: list[float] = []
    for p in probes:
        if p.reference or not lo_s <= p.at_s < hi_s:
            continue
        picked = p.picked.get(estimator)
        best = min(p.true_ms, key=p.true_ms.__getitem__)
        if picked is None:
            right.append(False)
            continue
        right.append(picked == best)
        regret.append(p.true_ms[picked] / p.true_ms[best] - 1.0)
    return (sum(right) / len(right) if right else None, median_or_none(regret))


def warm_accuracy(
    probes: Sequence[Probe], estimator: str, models: Sequence[str], lo_s: float, hi_s: float
) -> dict[str, float | None]:
    """Warm/cold predicted right: overall, on truly cold pairs, and what always answering
    "warm" would score (the baseline to beat)."""
    right = total = cold_right = cold_total = warm_truth = 0
    for p in probes:
        if p.reference or not lo_s <= p.at_s < hi_s:
            continue
        for m in models:
            said = p.predicted_warm.get(estimator, {}).get(m)
            truth = p.resident[m]
            total += 1
            warm_truth += truth
            if said is not None and said == truth:
                right += 1
                cold_right += not truth
            cold_total += not truth
    return {
        "accuracy": right / total if total else None,
        "cold_accuracy": cold_right / cold_total if cold_total else None,
        "always_warm": warm_truth / total if total else None,
        "cold_share": cold_total / total if total else None,
    }


def minutes_until(
    probes: Sequence[Probe], estimator: str, slow_model: str, slow_at_s: float,
    condition: Callable[[Probe], bool | None],
) -> float | None:
    """Minutes after ``slow_at_s`` from which ``condition`` holds on every reference probe
    to the last one; ``None`` if it does not hold on the last."""
    after = [p for p in probes if p.reference and p.at_s >= slow_at_s]
    settled_at: float | None = None
    for p in after:
        ok = condition(p)
        if ok:
            if settled_at is None:
                settled_at = p.at_s
        else:
            settled_at = None
    return None if settled_at is None else (settled_at - slow_at_s) / 60.0


def first_minute(
    probes: Sequence[Probe], slow_at_s: float, condition: Callable[[Probe], bool | None]
) -> float | None:
    """Minutes after ``slow_at_s`` to the first reference probe where ``condition`` holds."""
    for p in probes:
        if p.reference and p.at_s >= slow_at_s and condition(p):
            return (p.at_s - slow_at_s) / 60.0
    return None


def reaction_minutes(
    probes: Sequence[Probe], estimator: str, slow_model: str, slow_at_s: float
) -> dict[str, float | None | str]:
    """How long after the slowdown the estimator reflects it, on the reference request:

    ``ranking``: it stops picking the slowed model (``"n/a"`` when it was not picking it
    in most of the 30 minutes before either: nothing to stop doing); ``level``: its
    prediction for the slowed model reaches ``LEVEL_FACTOR`` × its median of those 30
    minutes. Each as ``*_first`` (the first probe where it holds) and settled (from
    which on it holds on every probe to the end; ``None``: not by the end)."""
    before = [p for p in probes if p.reference and slow_at_s - 1800 <= p.at_s < slow_at_s]
    out: dict[str, float | None | str] = {}
    picked_before = [p.picked.get(estimator) == slow_model for p in before]
    if not picked_before or sum(picked_before) < 0.5 * len(picked_before):
        out["ranking_first"] = out["ranking"] = "n/a"
    else:
        def moved(p: Probe) -> bool:
            return p.picked.get(estimator) not in (None, slow_model)

        out["ranking_first"] = first_minute(probes, slow_at_s, moved)
        out["ranking"] = minutes_until(probes, estimator, slow_model, slow_at_s, moved)
    known = [x for x in (p.predicted_ms[estimator].get(slow_model) for p in before) if x is not None]
    if not known:
        out["level_first"] = out["level"] = None
        return out
    base = statistics.median(known)

    def risen(p: Probe) -> bool:
        x = p.predicted_ms[estimator].get(slow_model)
        return x is not None and x >= LEVEL_FACTOR * base

    out["level_first"] = first_minute(probes, slow_at_s, risen)
    out["level"] = minutes_until(probes, estimator, slow_model, slow_at_s, risen)
    return out


# --- the pipeline -------------------------------------------------------------------------
class SpanSink:
    """Calls → SDK spans → tokentrace's processor → batch processor → PostgreSQL.

    The spans carry what the Ollama instrumentation records for a non-streamed chat
    (see ``tokentrace/instrumentation/ollama.py``), with start and end times set on
    the simulated clock, ``base`` being its zero."""

    def __init__(self, dsn: str, base: dt.datetime, *, keep_alive_attribute: str | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from tokentrace.exporter import PostgresSpanExporter
        from tokentrace.processor import TokenEfficiencySpanProcessor

        self.base_ns = int(base.timestamp() * 1e9)
        self.keep_alive_attribute = keep_alive_attribute
        self.provider = TracerProvider(resource=Resource.create({"service.name": "bench-dispatch"}))
        self.exporter = PostgresSpanExporter(dsn)
        self.provider.add_span_processor(
            TokenEfficiencySpanProcessor(
                BatchSpanProcessor(self.exporter, max_queue_size=65_536, max_export_batch_size=4_096,
                                   schedule_delay_millis=60_000)
            )
        )
        self.tracer = self.provider.get_tracer("bench_dispatch")
        self.spans = 0

    def _ns(self, t_s: float) -> int:
        return self.base_ns + int(round(t_s * 1e9))

    def emit(self, call: Call) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        from tokentrace import attributes as A

        start = self._ns(call.start_s)
        attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
            A.GEN_AI_PROVIDER_NAME: "ollama",
            A.GEN_AI_REQUEST_MODEL: call.model,
            A.SERVER_ADDRESS: "127.0.0.1",
            A.SERVER_PORT: 11434,
        }
        if self.keep_alive_attribute and call.keep_alive_s != OLLAMA_DEFAULT_KEEP_ALIVE_S:
            attrs[self.keep_alive_attribute] = call.keep_alive_s
        span = self.tracer.start_span(f"chat {call.model}", kind=SpanKind.CLIENT, start_time=start,
                                      attributes=attrs)
        if call.load_ms >= LOAD_SPAN_MIN_MS:
            load = self.tracer.start_span(
                f"load_model {call.model}", context=trace.set_span_in_context(span),
                kind=SpanKind.CLIENT, start_time=start,
                attributes={A.GEN_AI_OPERATION_NAME: A.OP_LOAD_MODEL, A.GEN_AI_PROVIDER_NAME: "ollama",
                            A.GEN_AI_REQUEST_MODEL: call.model},
            )
            load.end(end_time=start + int(call.load_ms * 1e6))
            self.spans += 1
        total_ns = int(call.duration_ms * 1e6)
        span.set_attributes({
            A.GEN_AI_RESPONSE_MODEL: call.model,
            A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
            A.GEN_AI_USAGE_INPUT_TOKENS: call.prompt_tokens,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: call.output_tokens,
            A.TT_SERVER_LOAD_NS: int(call.load_ms * 1e6),
            A.TT_SERVER_PROMPT_EVAL_NS: int(call.prefill_ms * 1e6),
            A.TT_SERVER_EVAL_NS: int(call.decode_ms * 1e6),
            A.TT_SERVER_TOTAL_NS: total_ns,
        })
        # The client sees a little more than the server's total (the HTTP round trip).
        span.end(end_time=start + total_ns + 1_500_000)
        self.spans += 1

    def flush(self) -> None:
        if not self.provider.force_flush(60_000):
            raise RuntimeError("spans were not exported within 60 s")

    def close(self) -> None:
        self.provider.shutdown()


# The tokentrace estimator: (prompt, output, models, at) -> Estimate-like objects with
# model, expected_ms, warm, trusted, rank (tokentrace.expected.Estimate).
TokentraceQuery = Callable[[int, int, Sequence[str], dt.datetime], Sequence[Any]]


@dataclass
class SimConfig:
    hours: float = 8.0
    slow_at_h: float = 6.0
    warmup_h: float = 1.0
    rate_per_min: float = 10.0
    probe_every_s: float = 60.0
    probes: int = 4
    noise: float = 0.06
    slow_model: str = "llama3.2:3b"
    slow_factor: float = 2.0
    seed: int = 1


@dataclass
class SimResult:
    probes: list[Probe]
    calls: int
    spans: int
    query_ms: list[float]
    models: list[str]
    config: SimConfig


ESTIMATORS = ("tokentrace", "litellm per-token", "litellm mean", "oracle")


def simulate(
    config: SimConfig,
    specs: Sequence[ModelSpec],
    *,
    sink: SpanSink | None,
    query: TokentraceQuery | None,
    base: dt.datetime,
) -> SimResult:
    """Run the fleet; feed both estimators the same finished calls; probe every minute.

    ``sink``/``query`` may be ``None`` (no tokentrace: its predictions stay empty), which
    the unit tests use to check the rest."""
    rng = random.Random(config.seed)
    probe_rng = random.Random(config.seed * 7919 + 1)
    pick_rng = random.Random(config.seed * 104729 + 2)
    duration_s = config.hours * 3600.0
    slow_at_s = config.slow_at_h * 3600.0
    fleet = Fleet(specs, rng, noise=config.noise, slow_model=config.slow_model,
                  slow_at_s=slow_at_s, slow_factor=config.slow_factor)
    models = [s.name for s in specs]
    per_token = LiteLLMLatency(per_token=True)
    plain = LiteLLMLatency(per_token=False)
    pending: list[tuple[float, int, Call]] = []  # by end time
    probes: list[Probe] = []
    query_ms: list[float] = []
    arrivals = traffic(specs, rng, config.rate_per_min, duration_s)
    next_arrival = next(arrivals, None)
    calls = 0
    tick = config.probe_every_s
    while tick < duration_s:
        # Serve everything that starts before this tick, in start order.
        while next_arrival is not None and next_arrival[0] < tick:
            start_s, model, prompt, output = next_arrival
            call = fleet.serve(model, prompt, output, start_s)
            heapq.heappush(pending, (call.end_s, calls, call))
            calls += 1
            next_arrival = next(arrivals, None)
        # What has finished by now is what the estimators may know.
        while pending and pending[0][0] <= tick:
            _, _, call = heapq.heappop(pending)
            response_s = call.duration_ms / 1000.0 + 0.0015
            per_token.observe(call.model, call.end_s, response_s, call.output_tokens)
            plain.observe(call.model, call.end_s, response_s, call.output_tokens)
            if sink is not None:
                sink.emit(call)
        if sink is not None:
            sink.flush()
        sizes = [request_size(probe_rng) for _ in range(config.probes)]
        sizes.append(REFERENCE_REQUEST)
        for index, (prompt, output) in enumerate(sizes):
            probe = Probe(
                at_s=tick, prompt_tokens=prompt, output_tokens=output,
                true_ms={m: fleet.expected_ms(m, prompt, output, tick) for m in models},
                realized_ms={
                    m: fleet.draw(m, prompt, output, tick, probe_rng).duration_ms + 1.5 for m in models},
                resident={m: fleet.resident(m, tick) for m in models},
                reference=index == len(sizes) - 1,
            )
            probe.predicted_ms["oracle"] = dict(probe.true_ms)
            probe.picked["oracle"] = min(probe.true_ms, key=probe.true_ms.__getitem__)
            probe.predicted_ms["litellm per-token"] = {
                m: per_token.expected_ms(m, output, tick) for m in models}
            probe.picked["litellm per-token"] = per_token.pick(models, tick, pick_rng)
            probe.predicted_ms["litellm mean"] = {m: plain.expected_ms(m, output, tick) for m in models}
            probe.picked["litellm mean"] = plain.pick(models, tick, pick_rng)
            probe.predicted_ms["tokentrace"] = {}
            probe.predicted_warm["tokentrace"] = {}
            probe.picked["tokentrace"] = None
            if query is not None:
                started = time.perf_counter()
                estimates = query(prompt, output, models, base + dt.timedelta(seconds=tick))
                query_ms.append((time.perf_counter() - started) * 1000.0)
                for e in estimates:
                    probe.predicted_ms["tokentrace"][e.model] = e.expected_ms
                    probe.predicted_warm["tokentrace"][e.model] = e.warm
                trusted = [e for e in estimates if e.trusted and e.expected_ms is not None]
                probe.picked["tokentrace"] = trusted[0].model if trusted else None
            probes.append(probe)
        tick += config.probe_every_s
    return SimResult(probes, calls, sink.spans if sink else 0, query_ms, models, config)


def score(result: SimResult) -> dict[str, Any]:
    """Every figure of one run (see the module docstring)."""
    c = result.config
    lo = c.warmup_h * 3600.0
    slow = c.slow_at_h * 3600.0
    end = c.hours * 3600.0
    out: dict[str, Any] = {"calls": result.calls, "spans": result.spans, "probes": len(result.probes)}
    for est in ESTIMATORS:
        fast, regret = fastest_rate(result.probes, est, lo, slow)
        fast_after, regret_after = fastest_rate(result.probes, est, slow, end)
        out[est] = {
            "mape": mape_table(result.probes, est, result.models, lo, slow),
            "mape_after": mape_table(result.probes, est, result.models, slow, end),
            "coverage": coverage(result.probes, est, result.models, lo, slow),
            "fastest": fast, "regret": regret,
            "fastest_after": fast_after, "regret_after": regret_after,
            "reaction": reaction_minutes(result.probes, est, c.slow_model, slow),
        }
    out["tokentrace"]["warm"] = warm_accuracy(result.probes, "tokentrace", result.models, lo, end)
    if result.query_ms:
        out["query_ms"] = {"median": statistics.median(result.query_ms), "max": max(result.query_ms)}
    return out


# --- one run against a real store ---------------------------------------------------------
def _keep_alive_attribute() -> str:
    from tokentrace import attributes as A

    return A.TT_REQUEST_KEEP_ALIVE_S  # what migration 0130 reads


@contextmanager
def embedded_server(prefix: str) -> Iterator[str]:
    """A fresh embedded PostgreSQL in a temporary directory, migrated; removed afterwards."""
    from tokentrace.store.embedded import embedded_dsn, stop_embedded
    from tokentrace.store.migrate import migrate

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            dsn = embedded_dsn(Path(tmp) / "pgdata")
            migrate(dsn)
            yield dsn
        finally:
            stop_embedded()


def fresh_database(dsn: str, name: str) -> str:
    """Database ``name`` made afresh on ``dsn``'s server and migrated."""
    import psycopg
    from psycopg import sql

    from tokentrace.store.migrate import migrate

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    migrate(url)
    return url


def run_once(server_dsn: str, config: SimConfig, specs: Sequence[ModelSpec]) -> dict[str, Any]:
    """One seed: a database of its own, the simulation through the real pipeline, scored."""
    import psycopg

    from tokentrace.expected import estimates

    dsn = fresh_database(server_dsn, f"tt_bench_dispatch_{config.seed}")
    # The simulated clock ends at the wall clock's now (rounded to the minute).
    now = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    base = now - dt.timedelta(hours=config.hours)
    sink = SpanSink(dsn, base, keep_alive_attribute=_keep_alive_attribute())
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        def query(prompt: int, output: int, models: Sequence[str], at: dt.datetime) -> Sequence[Any]:
            return estimates(conn, prompt, output, list(models), at)

        try:
            result = simulate(config, specs, sink=sink, query=query, base=base)
        finally:
            sink.close()
    scores = score(result)
    scores["wall_s"] = time.perf_counter() - started
    scores["seed"] = config.seed
    return scores


# --- expected_latency() at scale ------------------------------------------------------------
def time_at_scale(server_dsn: str, sizes: Sequence[int], runs: int) -> list[dict[str, Any]]:
    """``expected_latency()`` on stores of ``sizes`` spans (60 days of bench_reports'
    synthetic spans, loaded by its COPY): median ms over ``runs`` (after one warm-up),
    all models and two of them, SQL on a kept connection; and the Python call that
    opens its own connection."""
    import psycopg

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_reports
    from tokentrace.expected import expected_latency

    dsn = fresh_database(server_dsn, "tt_bench_dispatch_scale")
    out: list[dict[str, Any]] = []
    stored = 0
    start = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(
        days=bench_reports.DAYS)
    for i, size in enumerate(sorted(sizes)):
        # bench_reports' ids are seq + hour × 10⁶ + i: seeds 10¹⁰ apart never meet.
        load_s = bench_reports.load(dsn, size - stored, start, seq=(i + 1) * 10_000_000_000)
        stored = size
        with psycopg.connect(dsn, autocommit=True) as conn:
            spans = conn.execute("SELECT count(*) FROM tokentrace.spans").fetchone()[0]  # type: ignore[index]
            figures: dict[str, Any] = {"spans": spans, "load_s": load_s}
            for label, models in (("all models", None), ("two models", ["llama3.2", "mistral"])):
                def sql_call(m: Any = models) -> object:
                    return conn.execute(
                        "SELECT * FROM tokentrace.expected_latency(800, 200, %s)", (m,)).fetchall()

                figures[f"sql {label}"] = bench_reports._median_ms(sql_call, runs)
            rows = conn.execute("SELECT count(*) FROM tokentrace.expected_latency(800, 200)").fetchone()
            figures["rows"] = rows[0] if rows else 0
        figures["python call"] = bench_reports._median_ms(
            lambda: expected_latency(dsn, 800, 200), max(5, runs // 4))
        out.append(figures)
        print(f"  scale {spans:,} spans: " + ", ".join(
            f"{k} {v:.2f} ms" for k, v in figures.items() if k.startswith(("sql", "python"))),
            file=sys.stderr, flush=True)
    return out


# --- the report ---------------------------------------------------------------------------
def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    if x is None:
        return "never"
    if isinstance(x, str):
        return x
    return fmt.format(x)


def _median(values: Sequence[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values) and numbers:
        return statistics.median(numbers)
    if all(v == values[0] for v in values):
        return values[0]
    # Mixed ("never", "n/a", numbers): show them all.
    return " / ".join(_num(v) if not isinstance(v, float) else f"{v:.0f}" for v in values)


def summarize(runs: Sequence[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """Median over runs of every figure."""
    def med(path: Callable[[dict[str, Any]], Any]) -> Any:
        return _median([path(r) for r in runs])

    out: dict[str, Any] = {}
    for est in ESTIMATORS:
        e: dict[str, Any] = {}
        for window in ("mape", "mape_after"):
            e[window] = {m: med(lambda r, m=m, w=window: r[est][w][m]) for m in [*models, "all"]}
        for key in ("coverage", "fastest", "regret", "fastest_after", "regret_after"):
            e[key] = med(lambda r, k=key: r[est][k])
        e["reaction"] = {k: med(lambda r, k=k: r[est]["reaction"][k])
                         for k in runs[0][est]["reaction"]}
        out[est] = e
    out["tokentrace"]["warm"] = {k: med(lambda r, k=k: r["tokentrace"]["warm"][k])
                                 for k in runs[0]["tokentrace"]["warm"]}
    if "query_ms" in runs[0]:
        out["query_ms"] = med(lambda r: r["query_ms"]["median"])
    return out


def render(summary: dict[str, Any], models: Sequence[str], meta: dict[str, Any]) -> str:
    tt, pt, mn, orc = (summary[e] for e in ESTIMATORS)
    lines = [
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Command: `{meta['command']}` — {meta['runs']} run(s) (seeds {meta['seeds']}), "
        f"medians over runs; {meta['hours']:g} simulated hours, {meta['rate']:g} calls/min, "
        f"slowdown ×{meta['slow_factor']:g} of {meta['slow_model']} at {meta['slow_at_h']:g} h; "
        f"{meta['calls']} calls/run; wall {meta['wall_s']:.0f} s",
        "",
        "Median absolute percentage error of the expected latency against the held-out "
        "request's realised time (stationary: from the end of the warm-up to the slowdown):",
        "",
        "| model | tokentrace | LiteLLM per-token | LiteLLM mean | oracle (noise floor) "
        "| tokentrace / LiteLLM per-token | after the slowdown: tokentrace / LiteLLM per-token |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in [*models, "all"]:
        a, b, c, d = tt["mape"][m], pt["mape"][m], mn["mape"][m], orc["mape"][m]
        ratio = f"{a / b:.3f}" if isinstance(a, float) and isinstance(b, float) and b else "–"
        lines.append(
            f"| {'**overall**' if m == 'all' else m} | {_pct(a)} | {_pct(b)} | {_pct(c)} | {_pct(d)} "
            f"| {ratio} | {_pct(tt['mape_after'][m])} / {_pct(pt['mape_after'][m])} |")
    lines += [
        "",
        "| figure | tokentrace | LiteLLM per-token | LiteLLM mean | oracle |",
        "|---|---|---|---|---|",
        "| pick truly fastest, stationary | " + " | ".join(_pct(s["fastest"]) for s in (tt, pt, mn, orc)) + " |",
        "| pick truly fastest, after the slowdown | " + " | ".join(_pct(s["fastest_after"]) for s in (tt, pt, mn, orc)) + " |",
        "| median regret of the pick (its true time / the fastest's − 1), stationary | "
        + " | ".join(_pct(s["regret"]) for s in (tt, pt, mn, orc)) + " |",
        "| minutes until it stops picking the slowed model (reference request): first / settled | "
        + " | ".join(f"{_num(s['reaction']['ranking_first'])} / {_num(s['reaction']['ranking'])}"
                     for s in (tt, pt, mn, orc)) + " |",
        f"| minutes until its prediction for the slowed model reaches {LEVEL_FACTOR}× its level before: first / settled | "
        + " | ".join(f"{_num(s['reaction']['level_first'])} / {_num(s['reaction']['level'])}"
                     for s in (tt, pt, mn, orc)) + " |",
        "| figures given (model × request pairs), stationary | "
        + " | ".join(_pct(s["coverage"]) for s in (tt, pt, mn, orc)) + " |",
        "",
    ]
    w = tt["warm"]
    lines += [
        f"Warm/cold predicted right (tokentrace, after the warm-up): {_pct(w['accuracy'])} "
        f"(on the truly cold pairs: {_pct(w['cold_accuracy'])}; always answering \"warm\" would score "
        f"{_pct(w['always_warm'])}; {_pct(w['cold_share'])} of pairs cold). LiteLLM has no notion of it.",
    ]
    if summary.get("query_ms") is not None:
        lines.append(f"`expected_latency()` during the runs (≤ ~{meta['calls']} calls stored): median "
                     f"{summary['query_ms']:.2f} ms per query.")
    scale = meta.get("scale") or []
    if scale:
        lines += ["", "| stored spans | load (s) | SQL, all models (ms) | SQL, two models (ms) "
                      "| Python `expected_latency()` with its own connection (ms) | rows |",
                  "|---|---|---|---|---|---|"]
        for f in scale:
            lines.append(f"| {f['spans']:,} | {f['load_s']:.0f} | {f['sql all models']:.2f} "
                         f"| {f['sql two models']:.2f} | {f['python call']:.2f} | {f['rows']} |")
    lines += ["", "Verdicts: " + "; ".join(verdicts(summary, meta)) + "."]
    return "\n".join(lines)


def verdicts(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    tt, pt = summary["tokentrace"], summary["litellm per-token"]
    out = []
    a, b = tt["mape"]["all"], pt["mape"]["all"]
    if isinstance(a, float):
        out.append(f"MAPE {100 * a:.1f} % {'≤' if a <= TARGET_MAPE else '>'} 10 % target: "
                   f"{'met' if a <= TARGET_MAPE else 'NOT met'}"
                   + (f" ({a / b:.2f}× LiteLLM's per-token figure)" if isinstance(b, float) and b else ""))
    acc = tt["warm"]["accuracy"]
    if isinstance(acc, float):
        out.append(f"warm/cold {100 * acc:.1f} %: {'met' if acc >= TARGET_WARM else 'NOT met'} (≥ 95 %)")
    scale = meta.get("scale") or []
    if scale:
        worst = max(max(f["sql all models"], f["sql two models"]) for f in scale)
        flat = scale[-1]["sql all models"] / scale[0]["sql all models"] if len(scale) > 1 else None
        out.append(f"expected_latency() ≤ 10 ms at every size: {'met' if worst <= TARGET_SCALE_MS else 'NOT met'}"
                   f" (worst {worst:.2f} ms" + (f", largest/smallest {flat:.2f}×)" if flat else ")"))
    return out


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} cores (nproc), {cpu}, Python "
            f"{platform.python_version()}, load average {load:.2f} at the start")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="tokentrace.expected_latency against LiteLLM's latency-based routing on a "
                    "simulated fleet (issue 19). See the module docstring.")
    parser.add_argument("--quick", action="store_true",
                        help="3 simulated hours (slowdown at 2 h), 1 run, no scale phase")
    parser.add_argument("--runs", type=int, default=3, help="seeds, one fresh database each (3)")
    parser.add_argument("--seed", type=int, default=1, help="first seed (1)")
    parser.add_argument("--hours", type=float, default=8.0, help="simulated hours per run (8)")
    parser.add_argument("--slow-at", type=float, default=6.0, help="hour of the slowdown (6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="hours not scored at the start (1)")
    parser.add_argument("--rate", type=float, default=10.0, help="calls per simulated minute (10)")
    parser.add_argument("--probes", type=int, default=4, help="held-out requests per minute (4)")
    parser.add_argument("--noise", type=float, default=0.06, help="σ of each cost's log-normal noise (0.06)")
    parser.add_argument("--slow-model", default="llama3.2:3b", help="the model slowed (llama3.2:3b)")
    parser.add_argument("--models", type=int, default=len(FLEET), help=f"fleet size, 4–{len(FLEET)}")
    parser.add_argument("--scale", type=int, nargs="*", default=[1_000_000, 10_000_000],
                        help="stored spans to time expected_latency() at (1000000 10000000); 0 skips")
    parser.add_argument("--scale-runs", type=int, default=50, help="timed queries per size (50)")
    parser.add_argument("--dsn", help="a PostgreSQL server to make the databases on (default: embedded)")
    parser.add_argument("--json", type=Path, help="write every figure of every run here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hours, args.slow_at, args.warmup, args.runs, args.scale = 3.0, 2.0, 0.5, 1, [0]
    if not 4 <= args.models <= len(FLEET):
        parser.error(f"--models must be from 4 to {len(FLEET)}")
    if not 0 < args.warmup < args.slow_at < args.hours:
        parser.error("need 0 < --warmup < --slow-at < --hours")
    specs = FLEET[: args.models]
    if args.slow_model not in {s.name for s in specs}:
        parser.error(f"--slow-model must be one of {[s.name for s in specs]}")
    sizes = [s for s in args.scale if s > 0]
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "date": dt.datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "command": "python bench/bench_dispatch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": args.runs, "hours": args.hours, "rate": args.rate, "slow_at_h": args.slow_at,
        "slow_model": args.slow_model, "slow_factor": 2.0,
    }
    results: list[dict[str, Any]] = []

    @contextmanager
    def server() -> Iterator[str]:
        if args.dsn:
            yield args.dsn
        else:
            with embedded_server("tt-bench-dispatch-") as dsn:
                yield dsn

    with server() as dsn:
        seeds = list(range(args.seed, args.seed + args.runs))
        for seed in seeds:
            config = SimConfig(hours=args.hours, slow_at_h=args.slow_at, warmup_h=args.warmup,
                               rate_per_min=args.rate, probes=args.probes, noise=args.noise,
                               slow_model=args.slow_model, seed=seed)
            r = run_once(dsn, config, specs)
            results.append(r)
            print(f"  seed {seed}: {r['calls']} calls, {r['spans']} spans, MAPE tokentrace "
                  f"{_pct(r['tokentrace']['mape']['all'])} vs LiteLLM per-token "
                  f"{_pct(r['litellm per-token']['mape']['all'])}, {r['wall_s']:.0f} s",
                  file=sys.stderr, flush=True)
        meta["scale"] = time_at_scale(dsn, sizes, args.scale_runs) if sizes else []
    meta["seeds"] = ", ".join(map(str, seeds))
    meta["calls"] = int(statistics.median(r["calls"] for r in results))
    meta["wall_s"] = time.perf_counter() - started
    models = [s.name for s in specs]
    summary = summarize(results, models)
    print(render(summary, models, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, "runs": results},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
