"""Benchmark of the client instrumentation (issue 4): what a traced call costs.

Two kinds of figures, measured in the same run against same-run baselines:

over the network
    the real ``ollama`` and ``openai`` clients against the local fake servers of
    the test suite (``tests/fakeservers.py``, in a child process so the server does
    not compete with the client for the GIL): µs per non-streamed ``chat`` call
    instrumented minus uninstrumented, same client, same server; and µs per
    streamed chunk (a stream of ``--chunks`` chunks, instrumented minus plain, less
    the per-call figure, over the chunk count).
in process
    the instrumentation's wrapper around a stand-in for the library's request
    function that returns a real, prebuilt response (or a list of real chunk
    objects): the instrumentation's own cost without the round trip, whose jitter
    on a shared machine is larger than the overhead being measured.

"Instrumented" means tokentrace's span pipeline — ``TokenEfficiencySpanProcessor``
→ ``BatchSpanProcessor`` → an exporter that reads every span's attributes (which
derives ms/token, as any exporter does) and drops it; storage is the subject of
``bench_export.py`` — in two configurations: **traces** (no ``MeterProvider``: the
metrics API is a no-op, as after ``tokentrace.instrument()``) and **traces +
metrics** (an SDK ``MeterProvider`` records the four GenAI histograms).

In process, "span alone" is the pipeline's cost for the span an Ollama chat
produces (same attributes) with no instrumentation code around it: the wrapper's
own Python is the difference between a call's row and that one.

Runs are interleaved (baseline batch, instrumented batch, in alternating order
from round to round); each figure is the median over the rounds, with the
interquartile range of the per-round differences. Three measures per batch:

calling thread, wall and CPU
    ``time.perf_counter`` and ``time.thread_time`` of the thread making the calls,
    over the calls: what the caller waits for and what it burns. This is the
    overhead an instrumented call adds to the caller, and what the issue's target
    ("overhead per instrumented call") is judged on here.
whole process, CPU
    ``time.process_time`` (all threads) until the end of the tracer provider's
    ``force_flush`` after the calls, so the batch processor's export work for the
    batch's spans, done on its own thread, is counted too (not left to spill into
    the next batch, or out of the measurement). This is what tracing costs the
    machine, not what a call waits for.

A bare SDK span (start + end, no processor) is timed as the machine's yardstick.

Usage::

    python bench/bench_instrumentation.py            # a few minutes
    python bench/bench_instrumentation.py --quick    # under a minute
    # before/after in the same rounds: also the network figures of another version
    # (a copy of its src/tokentrace/instrumentation, e.g. from `git worktree add`)
    python bench/bench_instrumentation.py --compare-with /tmp/old/src/tokentrace/instrumentation
    # the floor: an SDK span alone after each real call (no processor, + batch
    # processor, + tokentrace's processor) next to the instrumented call, same rounds
    python bench/bench_instrumentation.py --floor
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMPARED = " [compared version]"  # label suffix of --compare-with's figures
TARGET_CALL_US = 50.0
TARGET_CHUNK_US = 1.0
MODEL = "bench"
NO_LOAD = "bench-no-load"  # a model whose server reports no load_duration
MESSAGES = [{"role": "user", "content": "Hi"}]

# The attributes of the span an Ollama chat produces: five set at its start, seven
# when the response is in (as the instrumentation does; a no-load reply sets these 12).
SPAN_START_ATTRS: dict[str, Any] = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "ollama",
    "gen_ai.request.model": MODEL, "server.address": "127.0.0.1", "server.port": 11434,
}  # fmt: skip
SPAN_END_ATTRS: dict[str, Any] = {
    "gen_ai.response.model": MODEL, "gen_ai.usage.input_tokens": 7,
    "gen_ai.usage.output_tokens": 3, "gen_ai.response.finish_reasons": ("stop",),
    "tokentrace.server.prompt_eval_duration_ns": 2_000_000,
    "tokentrace.server.eval_duration_ns": 4_500_000,
    "tokentrace.server.total_duration_ns": 9_000_000,
}  # fmt: skip


# --- the server child ---------------------------------------------------------------
def serve(chunks: int) -> None:
    """Run both fake servers until stdin closes; print their URLs first."""
    from tests.fakeservers import FakeOllama, FakeOpenAI, Script

    # A warm model: Ollama still reports a few ms of load_duration (the scheduler).
    scripts = {
        MODEL: Script(
            load_ns=3_000_000, prompt_eval_ns=2_000_000, eval_ns=4_500_000, total_ns=9_000_000
        ),
        NO_LOAD: Script(prompt_eval_ns=2_000_000, eval_ns=4_500_000, total_ns=9_000_000),
        "stream": Script(tokens=["x"] * chunks, eval_ns=1_000_000),
    }
    with FakeOllama(dict(scripts)) as native, FakeOpenAI(dict(scripts)) as compatible:
        print(json.dumps({"ollama": native.url, "openai": compatible.url}), flush=True)
        sys.stdin.read()


# --- measuring ----------------------------------------------------------------------
def _batch(
    fn: Callable[[], Any], n: int, flush: Callable[[], Any] | None = None
) -> tuple[float, float, float]:
    """Mean µs per call of ``fn`` over ``n`` calls: caller wall, caller CPU, process CPU.

    *Caller* figures are what the calling thread sees: wall time
    (``time.perf_counter``) and that thread's CPU (``time.thread_time``) over the
    ``n`` calls. The batch processor exports on its own thread, so its work is in
    the caller's figures only as far as it competes with the calls (for the GIL and
    the two cores) while they run.

    *Process* CPU (``time.process_time``, all threads) runs on to the end of
    ``flush()`` (the tracer provider's ``force_flush``): the batch processor
    exports, on its thread, what this batch queued before that clock stops, so the
    export work of every span is counted there and does not leak into the next batch.
    """
    process0 = time.process_time()
    wall0, thread0 = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn()
    wall1, thread1 = time.perf_counter(), time.thread_time()
    if flush is not None:
        flush()
    process1 = time.process_time()
    return (
        (wall1 - wall0) / n * 1e6,
        (thread1 - thread0) / n * 1e6,
        (process1 - process0) / n * 1e6,
    )


# The three measures of _batch, in its order: (key, label).
MEASURES = (
    ("caller_wall", "calling thread, wall"),
    ("caller_cpu", "calling thread, CPU"),
    ("process_cpu", "whole process, CPU (export thread included)"),
)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


def _summary(
    base: list[tuple[float, float, float]], diff: list[tuple[float, float, float]]
) -> dict[str, float]:
    """Per measure: median baseline, and median [q1, q3] of the per-round differences."""
    out: dict[str, float] = {"rounds": len(diff)}
    for i, (key, _) in enumerate(MEASURES):
        q1, median, q3 = _quartiles([d[i] for d in diff])
        out[f"{key}_baseline_us"] = statistics.median(b[i] for b in base)
        out[f"{key}_us"] = median
        out[f"{key}_q1_us"] = q1  # the spread of the per-round differences
        out[f"{key}_q3_us"] = q3
    return out


def _diff(
    traced: tuple[float, float, float], plain: tuple[float, float, float]
) -> tuple[float, float, float]:
    return (traced[0] - plain[0], traced[1] - plain[1], traced[2] - plain[2])


def _interleaved(
    plain: Callable[[], Any],
    traced: Callable[[], Any],
    n: int,
    rounds: int,
    flush: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Median over rounds of (traced − plain), wall and CPU µs, plus the baselines.

    Each round times a plain and a traced batch, in alternating order (so a drift
    of the machine's speed during a round does not favour either), each ending
    with ``flush()``.
    """
    for _ in range(max(n // 10, 3)):
        plain()
        traced()
    if flush is not None:
        flush()
    base: list[tuple[float, float, float]] = []
    diff: list[tuple[float, float, float]] = []
    for i in range(rounds):
        if i % 2:
            t, p = _batch(traced, n, flush), _batch(plain, n, flush)
        else:
            p, t = _batch(plain, n, flush), _batch(traced, n, flush)
        base.append(p)
        diff.append(_diff(t, p))
    return _summary(base, diff)


def dropping_batcher() -> Any:
    """A ``BatchSpanProcessor`` whose exporter reads each span's attributes, then drops it."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            for span in spans:
                _ = span.attributes
            return SpanExportResult.SUCCESS

    return BatchSpanProcessor(
        Drop(), max_queue_size=1 << 20, max_export_batch_size=4096, schedule_delay_millis=100
    )


class Tracing:
    """tokentrace's span pipeline with an exporter that stores nothing."""

    def __init__(self, metrics: bool) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        from tokentrace.processor import TokenEfficiencySpanProcessor

        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(TokenEfficiencySpanProcessor(dropping_batcher()))
        self.meter_provider = (
            MeterProvider(metric_readers=[InMemoryMetricReader()]) if metrics else None
        )
        self.label = "traces + metrics" if metrics else "traces"

    @property
    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tracer_provider": self.tracer_provider}
        if self.meter_provider is not None:
            out["meter_provider"] = self.meter_provider
        return out

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


# --- over the network ---------------------------------------------------------------
Variant = tuple[Any, dict[str, Any]]  # an instrumentor and its instrument() options


def _network_pair(
    fn: Callable[[], Any],
    variants: dict[str, Variant],
    tracing: Tracing,
    n: int,
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Like :func:`_interleaved`, instrumenting the real library around each traced batch.

    ``variants`` maps a label to an instrumentor and its ``instrument()`` options
    (the pipeline's providers are added): with ``--compare-with``, the same
    instrumentation in two versions. Each round times one plain batch and one batch
    per variant, in an order rotated from round to round, and every variant's
    overhead is taken against that round's plain batch.
    """
    for _ in range(max(n // 5, 3)):
        fn()  # warm the connection pool
    flush = tracing.tracer_provider.force_flush

    def traced_batch(label: str) -> tuple[float, float, float]:
        instrumentor, options = variants[label]
        instrumentor.instrument(**tracing.kwargs, **options)
        try:
            return _batch(fn, n, flush)
        finally:
            instrumentor.uninstrument()

    for label in variants:
        traced_batch(label)  # warm the instrumented path
    order: list[str | None] = [None, *variants]
    base: list[tuple[float, float, float]] = []
    diffs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in variants}
    for i in range(rounds):
        shift = i % len(order)
        timed: dict[str | None, tuple[float, float, float]] = {}
        for which in order[shift:] + order[:shift]:
            timed[which] = _batch(fn, n, flush) if which is None else traced_batch(which)
        plain = timed[None]
        base.append(plain)
        for label in variants:
            diffs[label].append(_diff(timed[label], plain))
    return {label: _summary(base, diffs[label]) for label in variants}


def load_instrumentation(path: str) -> tuple[Any, Any]:
    """``OllamaInstrumentor`` and ``OpenAIInstrumentor`` of another version.

    ``path`` is a copy of ``src/tokentrace/instrumentation`` (e.g. from ``git
    show``/``git worktree`` of an earlier commit). It is imported under another
    package name, next to the current one, so both can be timed in the same rounds.
    """
    import importlib
    import shutil
    import tempfile

    name = "tokentrace_compared_instrumentation"
    root = Path(tempfile.mkdtemp(prefix="tt-bench-"))
    shutil.copytree(path, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for module in (root / name).glob("*.py"):
        module.write_text(module.read_text().replace("tokentrace.instrumentation", name))
    sys.path.insert(0, str(root))
    ollama_module = importlib.import_module(f"{name}.ollama")
    openai_module = importlib.import_module(f"{name}.openai")
    return ollama_module.OllamaInstrumentor, openai_module.OpenAIInstrumentor


def network(quick: bool, chunks: int, compare_with: str | None = None) -> dict[str, Any]:
    import ollama
    import openai

    from tokentrace.instrumentation.ollama import OllamaInstrumentor
    from tokentrace.instrumentation.openai import OpenAIInstrumentor

    # Label suffix -> (Ollama, OpenAI instrumentor classes); "" is this tree's.
    versions: dict[str, tuple[Any, Any]] = {"": (OllamaInstrumentor, OpenAIInstrumentor)}
    if compare_with:
        versions[COMPARED] = load_instrumentation(compare_with)

    def ollama_variants(**options: Any) -> dict[str, Variant]:
        return {suffix: (classes[0](), options) for suffix, classes in versions.items()}

    def openai_variants() -> dict[str, Variant]:
        return {suffix: (classes[1](), {}) for suffix, classes in versions.items()}

    # Many short rounds: the loopback round trip's jitter is larger than the
    # overhead, and a median over many rounds is what tames it.
    calls, streams, rounds = (100, 4, 3) if quick else (200, 8, 21)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--chunks", str(chunks)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    pipelines = (Tracing(metrics=False), Tracing(metrics=True))
    out: dict[str, Any] = {}

    def put(case: str, results: dict[str, dict[str, float]]) -> None:
        for suffix, result in results.items():
            out[case + suffix] = result

    try:
        assert child.stdout is not None
        urls = json.loads(child.stdout.readline())
        with (
            ollama.Client(host=urls["ollama"]) as oc,
            openai.OpenAI(base_url=urls["openai"] + "/v1", api_key="k", max_retries=0) as ac,
        ):

            def ollama_chat() -> None:
                oc.chat(model=MODEL, messages=MESSAGES)

            def ollama_chat_no_load() -> None:
                oc.chat(model=NO_LOAD, messages=MESSAGES)

            def openai_chat() -> None:
                ac.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]

            def ollama_stream() -> None:
                for _ in oc.chat(model="stream", messages=MESSAGES, stream=True):
                    pass

            def openai_stream() -> None:
                for _ in ac.chat.completions.create(model="stream", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
                    pass

            for tracing in pipelines:
                label = tracing.label
                # The warm model reports a 3 ms load: a load_model span with
                # min_load_ms=0, none with a threshold above 3 ms (the default now).
                put(
                    f"ollama chat, warm, default min_load_ms ({label})",
                    _network_pair(ollama_chat, ollama_variants(), tracing, calls, rounds),
                )
                put(
                    f"ollama chat, warm, min_load_ms=0: load_model span ({label})",
                    _network_pair(
                        ollama_chat, ollama_variants(min_load_ms=0), tracing, calls, rounds
                    ),
                )
                put(
                    f"ollama chat, no load reported ({label})",
                    _network_pair(ollama_chat_no_load, ollama_variants(), tracing, calls, rounds),
                )
                put(
                    f"openai chat ({label})",
                    _network_pair(openai_chat, openai_variants(), tracing, calls, rounds),
                )
            traces = pipelines[0]
            ollama_s = _network_pair(ollama_stream, ollama_variants(), traces, streams, rounds)
            openai_s = _network_pair(openai_stream, openai_variants(), traces, streams, rounds)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)
        for tracing in pipelines:
            tracing.shutdown()
    for suffix in versions:
        # The stream's final chunk reports no load: the per-call part is the no-load call's.
        no_load = out[f"ollama chat, no load reported (traces){suffix}"]
        out[f"ollama per chunk{suffix}"] = _per_chunk(ollama_s[suffix], no_load, chunks + 1)
        openai_call = out[f"openai chat (traces){suffix}"]
        out[f"openai per chunk{suffix}"] = _per_chunk(openai_s[suffix], openai_call, chunks)
    return out


def _per_chunk(stream: dict[str, float], call: dict[str, float], chunks: int) -> dict[str, float]:
    """A stream's overhead less one call's, over its chunks, per measure."""
    out: dict[str, float] = {"rounds": stream["rounds"]}
    for key, _ in MEASURES:
        per_call = call[f"{key}_us"]
        out[f"{key}_baseline_us"] = stream[f"{key}_baseline_us"] / chunks
        for suffix in ("_us", "_q1_us", "_q3_us"):
            out[key + suffix] = (stream[key + suffix] - per_call) / chunks
    return out


# --- the floor: the SDK's span alone between network calls (--floor) ---------------
ONE_ATTR: dict[str, Any] = {"gen_ai.request.model": MODEL}
FLOOR_CASES = (
    ("a", "bare SDK span, 1 attribute, no processor"),
    ("b", "SDK span, 12 attributes, no processor"),
    ("c", "(b) + BatchSpanProcessor(dropping exporter)"),
    ("d", "(b) + TokenEfficiencySpanProcessor(BatchSpanProcessor(dropping exporter))"),
    ("e", "instrumented call (OllamaInstrumentor, traces)"),
)


@dataclass(frozen=True)
class FloorCase:
    """One traced batch of ``--floor``: the call, what to do around the batch, its flush."""

    call: Callable[[], Any]
    flush: Callable[[], Any] | None = None
    enter: Callable[[], Any] | None = None
    leave: Callable[[], Any] | None = None

    def batch(self, n: int) -> tuple[float, float, float]:
        if self.enter is not None:
            self.enter()
        try:
            return _batch(self.call, n, self.flush)
        finally:
            if self.leave is not None:
                self.leave()


def _rotated(
    plain: Callable[[], Any], cases: dict[str, FloorCase], n: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Like :func:`_network_pair`: per round one plain batch and one batch per case.

    The order is rotated from round to round; each case's overhead is taken against
    that round's plain batch (which flushes nothing).
    """
    for _ in range(max(n // 5, 3)):
        plain()  # warm the connection pool
    for case in cases.values():
        case.batch(n)  # warm each path
    order: list[str | None] = [None, *cases]
    base: list[tuple[float, float, float]] = []
    diffs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in cases}
    for i in range(rounds):
        shift = i % len(order)
        timed: dict[str | None, tuple[float, float, float]] = {}
        for which in order[shift:] + order[:shift]:
            timed[which] = _batch(plain, n) if which is None else cases[which].batch(n)
        base.append(timed[None])
        for label in cases:
            diffs[label].append(_diff(timed[label], timed[None]))
    return {label: _summary(base, diffs[label]) for label in cases}


def floor(quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """What an SDK span costs right after each real ``ollama`` call, against the plain call.

    Cases (a)–(d) make a span after each uninstrumented call (no-load chat on the
    fake server) with no instrumentation around it — (a) a bare one, (b) one with the
    12 attributes of the instrumentation's span (five at start, seven set before the
    end) and no processor, (c) (b) through a ``BatchSpanProcessor`` with a dropping
    exporter, (d) (b) through tokentrace's pipeline — and (e) is the instrumented call
    itself on that same pipeline. The same spans in a tight loop (no network) are
    timed too, as the in-cache reference.
    """
    import ollama
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind, Tracer

    from tokentrace.instrumentation.ollama import OllamaInstrumentor

    calls, default_rounds = (100, 3) if quick else (200, 21)
    rounds = rounds or default_rounds
    loop_n, loop_rounds = (1_000, 3) if quick else (5_000, 7)
    bare = TracerProvider()  # no span processor
    batched = TracerProvider()
    batched.add_span_processor(dropping_batcher())
    tracing = Tracing(metrics=False)  # tokentrace's pipeline: (d) and (e)
    name = f"chat {MODEL}"

    def one_attribute(tracer: Tracer) -> Callable[[], None]:
        def span() -> None:
            tracer.start_span(name, kind=SpanKind.CLIENT, attributes=ONE_ATTR).end()

        return span

    def twelve_attributes(tracer: Tracer) -> Callable[[], None]:
        def span() -> None:
            s = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=SPAN_START_ATTRS)
            s.set_attributes(SPAN_END_ATTRS)
            s.end()

        return span

    spans: dict[str, tuple[Callable[[], None], Callable[[], Any] | None]] = {
        "a": (one_attribute(bare.get_tracer("bench")), None),
        "b": (twelve_attributes(bare.get_tracer("bench")), None),
        "c": (twelve_attributes(batched.get_tracer("bench")), batched.force_flush),
        "d": (
            twelve_attributes(tracing.tracer_provider.get_tracer("bench")),
            tracing.tracer_provider.force_flush,
        ),
    }
    out: dict[str, Any] = {
        "calls": calls,
        "reference_span_us": reference_span_us(quick),
        "tight_loop": {
            key: _interleaved(lambda: None, span, loop_n, loop_rounds, flush)
            for key, (span, flush) in spans.items()
        },
    }
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--chunks", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        urls = json.loads(child.stdout.readline())
        with ollama.Client(host=urls["ollama"]) as oc:

            def chat() -> None:
                oc.chat(model=NO_LOAD, messages=MESSAGES)

            def then(span: Callable[[], None]) -> Callable[[], None]:
                def call() -> None:
                    chat()
                    span()

                return call

            instrumentor = OllamaInstrumentor()
            cases = {key: FloorCase(then(span), flush) for key, (span, flush) in spans.items()}
            cases["e"] = FloorCase(
                chat,
                tracing.tracer_provider.force_flush,
                enter=lambda: instrumentor.instrument(**tracing.kwargs),
                leave=instrumentor.uninstrument,
            )
            out["network"] = _rotated(chat, cases, calls, rounds)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)
        for provider in (bare, batched):
            provider.shutdown()
        tracing.shutdown()
    return out


def run_floor(quick: bool, rounds: int | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_at_start": _load(),
    }
    result["floor"] = floor(quick, rounds)
    result["load_at_end"] = _load()
    return result


# --- in process ---------------------------------------------------------------------
def _returns(value: Any) -> Callable[..., Any]:
    return lambda *args, **kwargs: value


def in_process(quick: bool, chunks: int, tracing: Tracing) -> dict[str, Any]:
    """The wrappers' own cost around prebuilt real responses (no network)."""
    import ollama
    import openai
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from opentelemetry.trace import SpanKind

    from tokentrace.instrumentation import _openai_stream
    from tokentrace.instrumentation import ollama as tt_ollama
    from tokentrace.instrumentation import openai as tt_openai
    from tokentrace.instrumentation.call import Call
    from tokentrace.instrumentation.recording import recording_tools

    n, rounds = (2_000, 3) if quick else (20_000, 7)
    m = max(n // chunks, 10)
    telemetry = recording_tools("bench", tracing.kwargs)
    flush = tracing.tracer_provider.force_flush
    out: dict[str, Any] = {}

    # What the pipeline alone costs for the span an Ollama chat produces (same name,
    # kind and 12 attributes, five at start and seven at the end), with no
    # instrumentation code: the wrapper's own share is the difference.
    def pipeline_span() -> None:
        span = telemetry.tracer.start_span(
            f"chat {MODEL}", kind=SpanKind.CLIENT, attributes=SPAN_START_ATTRS
        )
        span.set_attributes(SPAN_END_ATTRS)
        span.end()

    out["span alone, no wrapper"] = _interleaved(lambda: None, pipeline_span, n, rounds, flush)

    # Ollama: _request(cls, "POST", path, json=..., stream=...) returning a ChatResponse.
    reply = ollama.ChatResponse(
        model=MODEL, done=True, done_reason="stop", message=ollama.Message(role="assistant", content="Hi!"),
        total_duration=9_000_000, load_duration=3_000_000, prompt_eval_count=7,
        prompt_eval_duration=2_000_000, eval_count=3, eval_duration=4_500_000,
    )  # fmt: skip
    no_load = reply.model_copy(update={"load_duration": None})
    client = ollama.Client(host="http://127.0.0.1:11434")
    args = (ollama.ChatResponse, "POST", "/api/chat")
    body = {"model": MODEL, "messages": MESSAGES, "stream": False}
    wrapper = tt_ollama._sync_wrapper(telemetry, 0)
    for label, response in (
        ("ollama chat, 3 ms load reported, min_load_ms=0: load_model span", reply),
        ("ollama chat, no load reported", no_load),
    ):
        request = _returns(response)
        out[label] = _interleaved(
            lambda: request(*args, json=body, stream=False),  # noqa: B023
            lambda: wrapper(request, client, args, {"json": body, "stream": False}),  # noqa: B023
            n, rounds, flush,
        )  # fmt: skip

    parts = [
        ollama.ChatResponse(
            model=MODEL, done=False, message=ollama.Message(role="assistant", content="x")
        )
    ]
    parts = parts * chunks + [no_load]

    def parts_gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
        return (p for p in parts)

    def ollama_plain() -> None:
        for _ in parts_gen():
            pass

    def ollama_traced() -> None:
        for _ in wrapper(parts_gen, client, args, {"json": body, "stream": True}):
            pass

    stream = _interleaved(ollama_plain, ollama_traced, m, rounds, flush)
    out["ollama per chunk"] = _per_chunk(stream, out["ollama chat, no load reported"], chunks + 1)

    # OpenAI: Completions.create(model=..., messages=...) returning a ChatCompletion.
    completion = ChatCompletion.model_validate({
        "id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    })  # fmt: skip
    oa = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="k")
    create = _returns(completion)
    create_wrapper = tt_openai._sync_wrapper(telemetry, "chat", ())
    kwargs = {"model": MODEL, "messages": MESSAGES}
    out["openai chat"] = _interleaved(
        lambda: create(**kwargs),
        lambda: create_wrapper(create, oa.chat.completions, (), kwargs),
        n,
        rounds,
        flush,
    )

    chunk = ChatCompletionChunk.model_validate({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
    })  # fmt: skip
    chunk_list = [chunk] * chunks
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": MODEL}

    def openai_plain() -> None:
        for _ in iter(chunk_list):
            pass

    def openai_traced() -> None:
        call = Call(telemetry, f"chat {MODEL}", SpanKind.CLIENT, attrs)
        state = _openai_stream.StreamState("chat", capture_content=False)
        for _ in _openai_stream.traced_stream(iter(chunk_list), call, state):
            pass

    stream = _interleaved(openai_plain, openai_traced, m, rounds, flush)
    out["openai per chunk"] = _per_chunk(stream, out["openai chat"], chunks)
    oa.close()
    client.close()  # type: ignore[no-untyped-call]
    return out


def reference_span_us(quick: bool) -> float:
    """CPU µs of one bare SDK span (start + end, no processor): the machine's yardstick."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("bench")

    def span() -> None:
        tracer.start_span("chat bench", attributes={"gen_ai.request.model": MODEL}).end()

    return _interleaved(lambda: None, span, 2_000 if quick else 20_000, 3 if quick else 7)[
        "process_cpu_us"
    ]


def _load() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().split()[0] if path.exists() else "?"


def run(quick: bool, chunks: int, compare_with: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_at_start": _load(),
        "reference_span_us": reference_span_us(quick),
        "in_process": {},
    }
    for metrics in (False, True):
        tracing = Tracing(metrics)
        try:
            result["in_process"][tracing.label] = in_process(quick, chunks, tracing)
        finally:
            tracing.shutdown()
    result["network"] = network(quick, chunks, compare_with)
    result["load_at_end"] = _load()
    return result


# --- report -------------------------------------------------------------------------
def _machine() -> str:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return "?"

    memory = out(["free", "-h"]).splitlines()
    total = memory[1].split()[1] if len(memory) > 1 else "?"
    return f"{out(['nproc'])} CPUs, {total} RAM, Python {platform.python_version()}"


def _cell(r: dict[str, float], key: str) -> str:
    return f"{r[key + '_us']:.2f} [{r[key + '_q1_us']:.2f}–{r[key + '_q3_us']:.2f}]"


def _verdict(r: dict[str, float], key: str, target: float) -> str:
    """Met / NOT met by the median, "undecided" when the IQR straddles the target."""
    if r[key + "_q1_us"] <= target < r[key + "_q3_us"]:
        return f"undecided (median {r[key + '_us']:.2f}, IQR straddles {target:g})"
    return "met" if r[key + "_us"] <= target else "NOT met"


def report(data: dict[str, Any], quick: bool) -> str:
    from importlib.metadata import version

    by_config = data["in_process"]
    lines = [
        (
            f"{data['started']}{' (--quick)' if quick else ''} · {_machine()} · load average "
            f"{data['load_at_start']} at the start, {data['load_at_end']} at the end · ollama "
            f"{version('ollama')}, openai {version('openai')}, opentelemetry-sdk "
            f"{version('opentelemetry-sdk')}"
        ),
        "",
        (
            f"Yardstick: one bare SDK span (start + end, no processor) = "
            f"{data['reference_span_us']:.1f} µs CPU."
        ),
        "",
        (
            "In process (the wrapper around a prebuilt real response; µs, median of "
            f"{by_config['traces']['openai chat']['rounds']} rounds [interquartile range]):"
        ),
        "",
        "| | traces: calling thread CPU | traces: process CPU "
        "| traces + metrics: calling thread CPU | traces + metrics: process CPU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in by_config["traces"]:
        unit = "chunk" if "chunk" in key else "call"
        cells = " | ".join(
            _cell(by_config[c][key], measure)
            for c in ("traces", "traces + metrics")
            for measure in ("caller_cpu", "process_cpu")
        )
        lines.append(f"| {key} (µs/{unit}) | {cells} |")
    network = data["network"]
    lines += [
        "",
        (
            "Over the network (real client, local fake server in another process): overhead = "
            "instrumented − uninstrumented, median [interquartile range] of the per-round "
            f"differences over {network['openai chat (traces)']['rounds']} rounds; baseline = "
            "the same run's uninstrumented median. Calling thread = what the caller waits for "
            "(wall) and burns (CPU) during its calls; whole process = CPU of all threads up to "
            "the end of a flush (the batch processor's export included):"
        ),
        "",
        "| | baseline wall / thread CPU / process CPU | calling thread, wall | "
        "calling thread, CPU | whole process, CPU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, r in network.items():
        unit = "chunk" if "chunk" in key else "call"
        base = " / ".join(f"{r[m + '_baseline_us']:.1f}" for m, _ in MEASURES)
        cells = " | ".join(_cell(r, m) for m, _ in MEASURES)
        lines.append(f"| {key} (per {unit}) | {base} | {cells} |")
    lines += [
        "",
        (
            f"Targets: ≤ {TARGET_CALL_US:.0f} µs per non-streamed call, ≤ "
            f"{TARGET_CHUNK_US:.0f} µs per streamed chunk (over the network, per measure):"
        ),
        "",
    ]
    for key, r in network.items():
        target = TARGET_CHUNK_US if "chunk" in key else TARGET_CALL_US
        verdicts = ", ".join(f"{label}: {_verdict(r, m, target)}" for m, label in MEASURES)
        lines.append(f"* {key}: {verdicts}")
    return "\n".join(lines)


def floor_report(data: dict[str, Any], quick: bool) -> str:
    from importlib.metadata import version

    f = data["floor"]
    network = f["network"]
    plain = next(iter(network.values()))
    lines = [
        (
            f"{data['started']}{' (--quick)' if quick else ''} · {_machine()} · load average "
            f"{data['load_at_start']} at the start, {data['load_at_end']} at the end · ollama "
            f"{version('ollama')}, opentelemetry-sdk {version('opentelemetry-sdk')}"
        ),
        "",
        (
            f"Yardstick: one bare SDK span (start + end, no processor), tight loop = "
            f"{f['reference_span_us']:.1f} µs CPU."
        ),
        "",
        (
            "Floor: ollama chat (no load reported) over the network, each case's batch "
            "against the same round's plain batch; µs per call, median [interquartile "
            f"range] of the per-round differences over {plain['rounds']} rounds × "
            f"{f['calls']} calls, order rotated per round. Plain call: "
            f"{plain['caller_wall_baseline_us']:.1f} wall, "
            f"{plain['caller_cpu_baseline_us']:.1f} thread CPU, "
            f"{plain['process_cpu_baseline_us']:.1f} process CPU. Tight loop = the same "
            "span with no network call (calling thread CPU, in-cache reference)."
        ),
        "",
        (
            "| case | calling thread, wall | calling thread, CPU | whole process, CPU "
            "(to the end of a flush) | tight loop, thread CPU |"
        ),
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in FLOOR_CASES:
        r = network[key]
        loop = f["tight_loop"].get(key)
        tight = _cell(loop, "caller_cpu") if loop is not None else "—"
        cells = " | ".join(_cell(r, m) for m, _ in MEASURES)
        lines.append(f"| ({key}) {label} | {cells} | {tight} |")
    lines += ["", f"≤ {TARGET_CALL_US:.0f} µs per call, calling thread:", ""]
    for key, label in FLOOR_CASES:
        r = network[key]
        verdicts = ", ".join(
            f"{name}: {_verdict(r, m, TARGET_CALL_US)}"
            for m, name in MEASURES
            if m != "process_cpu"
        )
        lines.append(f"* ({key}) {label}: {verdicts}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few calls: a smoke run")
    parser.add_argument(
        "--chunks", type=int, default=500, help="chunks per streamed call (default 500)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument(
        "--report", metavar="JSON", help="print the report of figures saved with --json"
    )
    parser.add_argument(
        "--compare-with",
        metavar="DIR",
        help=(
            "a copy of src/tokentrace/instrumentation of another version: its network "
            "figures are measured in the same rounds, labelled" + COMPARED
        ),
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help=(
            "instead: what an OpenTelemetry SDK span alone (no processor, then through "
            "the batch processor and tokentrace's) adds right after each real ollama "
            "call, next to the instrumented call"
        ),
    )
    parser.add_argument("--rounds", type=int, help="rounds of --floor (default 21; 3 with --quick)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.chunks)
        return 0
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        show = floor_report if "floor" in saved else report
        print(show(saved, saved.get("quick", False)))
        return 0
    if args.floor:
        data = run_floor(args.quick, args.rounds)
        show = floor_report
    else:
        data = run(args.quick, args.chunks, args.compare_with)
        show = report
    data["quick"] = args.quick
    print(json.dumps(data, indent=2) if args.json else show(data, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
