"""``tokentrace demo``: a simulated fleet, through the real pipeline.

Four models of different speeds serve calls over the last two weeks (a cold load
first, and another cold load before the last few hours of traffic), with
Ollama-style server timings (prefill and decode) on each call and one call that
fails. One model has become slower in the last hours, so the trend reports show a
regression against its baseline. The spans are real OpenTelemetry spans with
explicit timestamps (nothing sleeps), sent through
:class:`~tokentrace.processor.TokenEfficiencySpanProcessor`, a
``BatchSpanProcessor`` and :class:`~tokentrace.exporter.PostgresSpanExporter` into
the database, exactly as an instrumented application's would be.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from tokentrace import attributes as A
from tokentrace.pipeline import default_span_processor

_NS = 1_000_000_000


@dataclass(frozen=True)
class SimModel:
    name: str
    provider: str
    decode_ms: float  # per output token
    prefill_ms: float  # per input token
    load_s: float  # cold load
    recent_slowdown: float = 1.0  # > 1: slower in the last hours than in its history


FLEET = (
    SimModel("llama3.2:3b", "ollama", decode_ms=11.0, prefill_ms=0.6, load_s=1.8),
    SimModel("qwen2.5:7b", "ollama", decode_ms=24.0, prefill_ms=1.2, load_s=3.5, recent_slowdown=1.3),
    SimModel("mistral:7b-instruct", "vllm", decode_ms=19.0, prefill_ms=0.9, load_s=4.2),
    SimModel("llama3.1:70b", "ollama", decode_ms=85.0, prefill_ms=4.0, load_s=21.0),
)


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r  [{bar}] {done:4d}/{total} {label:<24}{end}")
    sys.stderr.flush()


def _load(tracer: Tracer, model: SimModel, start_ns: int, rng: random.Random) -> int:
    duration = int(model.load_s * rng.uniform(0.9, 1.2) * _NS)
    span = tracer.start_span(
        f"{A.OP_LOAD_MODEL} {model.name}",
        kind=SpanKind.CLIENT,
        start_time=start_ns,
        attributes={
            A.GEN_AI_OPERATION_NAME: A.OP_LOAD_MODEL,
            A.GEN_AI_REQUEST_MODEL: model.name,
            A.GEN_AI_PROVIDER_NAME: model.provider,
        },
    )
    span.end(end_time=start_ns + duration)
    return start_ns + duration


def _call(
    tracer: Tracer, model: SimModel, start_ns: int, rng: random.Random, fail: bool, slowdown: float
) -> None:
    prompt = rng.randint(20, 900)
    output = rng.randint(16, 600)
    jitter = rng.lognormvariate(0, 0.15) * slowdown
    prefill_ns = int(prompt * model.prefill_ms * jitter * 1e6)
    eval_ns = int(output * model.decode_ms * jitter * 1e6)
    overhead_ns = int(rng.uniform(3, 25) * 1e6)
    span = tracer.start_span(
        f"{A.OP_CHAT} {model.name}",
        kind=SpanKind.CLIENT,
        start_time=start_ns,
        attributes={
            A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
            A.GEN_AI_REQUEST_MODEL: model.name,
            A.GEN_AI_RESPONSE_MODEL: model.name,
            A.GEN_AI_PROVIDER_NAME: model.provider,
            A.SERVER_ADDRESS: "127.0.0.1",
            A.SERVER_PORT: 11434 if model.provider == "ollama" else 8000,
        },
    )
    if fail:
        span.set_attribute(A.ERROR_TYPE, "timeout")
        span.set_status(Status(StatusCode.ERROR, "request timed out after 30 s"))
        span.end(end_time=start_ns + 30 * _NS)
        return
    span.set_attributes(
        {
            A.GEN_AI_USAGE_INPUT_TOKENS: prompt,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: output,
            A.TT_SERVER_PROMPT_EVAL_NS: prefill_ns,
            A.TT_SERVER_EVAL_NS: eval_ns,
            A.TT_SERVER_TOTAL_NS: prefill_ns + eval_ns,
            A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        }
    )
    span.end(end_time=start_ns + prefill_ns + eval_ns + overhead_ns)


def _history(tracer: Tracer, model: SimModel, now: int, days: int, per_day: int, rng: random.Random) -> int:
    if days <= 0:
        return 0
    t = _load(tracer, model, now - days * 86_400 * _NS, rng)
    for day in range(days, 0, -1):
        day_start = now - day * 86_400 * _NS
        for offset in sorted(rng.uniform(0, 86_000) for _ in range(per_day)):
            _call(tracer, model, max(day_start + int(offset * _NS), t), rng, fail=False, slowdown=1.0)
    return 1 + days * per_day


def run_demo(
    dsn: str,
    *,
    calls_per_model: int = 60,
    seed: int = 7,
    hours: float = 6.0,
    history_days: int = 14,
) -> int:
    """Send the simulated fleet's spans to ``dsn``; returns the number of spans sent.

    Each model gets ``calls_per_model`` calls over the last ``hours`` (after a cold
    load), and before that ``history_days`` days of lighter traffic.
    """
    rng = random.Random(seed)
    processor = default_span_processor(dsn)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tokentrace-demo"}), shutdown_on_exit=False
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tokentrace.demo")
    now = time.time_ns()
    window = int(hours * 3600 * _NS)
    total = len(FLEET) * calls_per_model
    sent = done = 0
    failing = (rng.randrange(len(FLEET)), rng.randrange(calls_per_model))
    print(
        f"Simulating {len(FLEET)} models: {calls_per_model} calls each over the last {hours:g} hours"
        + (f", after {history_days} days of history" if history_days > 0 else "")
    )
    for m_index, model in enumerate(FLEET):
        sent += _history(tracer, model, now - window, history_days, 8, rng)
        t = now - window + rng.randint(0, 600) * _NS
        t = _load(tracer, model, t, rng)
        sent += 1
        step = (now - t) // (calls_per_model + 1)
        for c_index in range(calls_per_model):
            # Evenly spread up to the present, so even a 1-hour window has traffic.
            t += int(step * rng.uniform(0.8, 1.2))
            fail = (m_index, c_index) == failing
            _call(tracer, model, t, rng, fail=fail, slowdown=model.recent_slowdown)
            sent += 1
            done += 1
            if done % 10 == 0 or done == total:
                _progress(done, total, model.name)
    print("Exporting spans to PostgreSQL ...", end=" ", flush=True)
    provider.shutdown()
    print(f"done: {sent} spans, 1 failed call")
    return sent
