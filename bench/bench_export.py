"""Benchmark of the core pipeline (issue 2): spans → processor → batch → PostgreSQL.

Measures, in one run and against baselines measured in the same run:

peak
    spans/s *committed* (rows counted in PostgreSQL) when GenAI spans are created
    as fast as one thread can, through ``TokenEfficiencySpanProcessor`` →
    ``BatchSpanProcessor`` → ``PostgresSpanExporter`` exactly as
    ``tokentrace.pipeline.default_span_processor()`` builds them. Baselines: a raw
    binary ``COPY`` of the same rows (tuples built beforehand, one COPY and one
    commit per batch of the same size) and a naive INSERT-per-span exporter.
steady
    an offered load of 15,000 spans/s for 60 s, paced from one thread, with our
    batch-processor defaults and with the SDK's (queue 2,048, batch 512, delay
    5 s). Dropped = spans created − rows stored after the final flush; the SDK's
    own ``queue_full`` counter (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``) is
    read as a cross-check. Peak RSS over the phase, the longest queue seen, and
    the memory one queued span costs (tracemalloc) are reported.
processor
    µs per span to create and end a GenAI span with the processor wrapping a no-op
    processor, against the bare SDK with the same no-op processor: many short
    pairs of runs (41 pairs of 10,000 spans each; which side goes first alternates),
    timed in the creating thread's CPU time. Reported: the median of the per-pair
    differences and their interquartile range, so a few pairs disturbed by the
    rest of the machine move neither. The derivation the processor defers to the
    first read of the span's attributes (done by the exporter, off the
    application's thread) is timed too, once per pair.

rows
    CPU µs per span of the exporter's row building alone (everything ``export()``
    does before the database), for spans forwarded by the processor and for plain
    SDK spans; only with ``--baseline-src``.

Every phase runs in a fresh child process, so one phase's memory, threads and
interpreter state do not colour the next. Usage::

    python bench/bench_export.py            # full run: 5-8 minutes
    python bench/bench_export.py --quick    # smoke run, well under a minute
    python bench/bench_export.py --dsn postgresql://...   # an existing server
    # before/after: each phase for another version's src and this tree, alternating
    mkdir /tmp/before && git archive main src | tar -x -C /tmp/before
    python bench/bench_export.py --baseline-src /tmp/before/src --runs 5

Without ``--dsn`` a fresh embedded PostgreSQL is started in a temporary
directory (removed afterwards). Rows in ``tokentrace.spans`` of the target
database are deleted between phases, so never point ``--dsn`` at real data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor

TARGET_PEAK = 20_000.0
STEADY_RATE = 15_000
TARGET_OVERHEAD_US = 2.0
TICK_S = 0.010

MODELS = (
    ("llama3.1:8b", "ollama"),
    ("qwen2.5:7b-instruct", "ollama"),
    ("mistral-small-24b", "vllm"),
    ("gpt-4o-mini", "openai"),
)


# --- the workload ---------------------------------------------------------------------


def genai_attributes(count: int = 64) -> list[dict[str, Any]]:
    """Attribute sets of realistic chat spans, cycled through by every phase."""
    sets = []
    for i in range(count):
        model, provider = MODELS[i % len(MODELS)]
        sets.append(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "gen_ai.response.model": model,
                "gen_ai.response.id": f"chatcmpl-{i:08x}",
                "gen_ai.response.finish_reasons": ("stop",),
                "gen_ai.usage.input_tokens": 120 + 37 * i % 900,
                "gen_ai.usage.output_tokens": 40 + 53 * i % 600,
                "server.address": "127.0.0.1",
                "server.port": 11434,
            }
        )
    return sets


def make_provider(processor: Any) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(
        resource=Resource.create({"service.name": "bench-export", "deployment.environment": "bench"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(processor)
    return provider


class SpanMaker:
    """Creates and ends GenAI spans; the body of every phase's hot loop."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind

        self._tracer = provider.get_tracer("bench_export")
        self._kind = SpanKind.CLIENT
        self._sets = genai_attributes()
        self._names = [f"chat {a['gen_ai.request.model']}" for a in self._sets]
        self.created = 0

    def make(self, count: int) -> None:
        start_span, kind, sets, names = self._tracer.start_span, self._kind, self._sets, self._names
        n = len(sets)
        base = self.created
        for i in range(base, base + count):
            start_span(names[i % n], kind=kind, attributes=sets[i % n]).end()
        self.created = base + count


class NoopProcessor(SpanProcessor):
    """A processor that does nothing."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class CollectingProcessor(NoopProcessor):
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def on_end(self, span: Any) -> None:
        self.spans.append(span)


# --- database helpers -----------------------------------------------------------------


def reset_table(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE tokentrace.spans")
        conn.execute("CHECKPOINT")


def count_rows(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tokentrace.spans").fetchone()
    return int(row[0]) if row else 0


def rss_kib(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process in KiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- phases (each runs in its own child process) -----------------------------------------


def phase_copy(dsn: str, n: int, batch: int) -> dict[str, Any]:
    """Raw binary COPY of rows built beforehand, in transactions of ``batch`` rows."""
    import psycopg
    from psycopg.types.json import Jsonb

    from tokentrace.exporter.spans import span_data
    from tokentrace.processor import TokenEfficiencySpanProcessor
    from tokentrace.store.rows import COLUMN_TYPES, COLUMNS, build_row, dumps

    sink = CollectingProcessor()
    SpanMaker(make_provider(TokenEfficiencySpanProcessor(sink))).make(n)
    json_columns = (COLUMNS.index("attributes"), COLUMNS.index("resource"))
    tuples = []
    for span in sink.spans:
        values = list(build_row(span_data(span)).values)
        for i in json_columns:
            values[i] = Jsonb(values[i], dumps=dumps)
        tuples.append(tuple(values))
    days = sorted({values[COLUMNS.index("start_time")].date() for values in tuples})
    statement = f"COPY tokentrace.spans ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    reset_table(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tokentrace.ensure_partitions(%s::date[])", (days,))
        conn.commit()
        gc.collect()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for first in range(0, n, batch):
            with conn.cursor() as cur, cur.copy(statement) as copy:
                copy.set_types(list(COLUMN_TYPES))
                for row in tuples[first : first + batch]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    stored = count_rows(dsn)
    return {
        "spans": n,
        "stored": stored,
        "seconds": elapsed,
        "rate": stored / elapsed,
        "cpu_us_per_span": cpu / n * 1e6,
    }


class NaiveInsertExporter:
    """For context: one INSERT statement per span, one commit per batch."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        from tokentrace.store.rows import COLUMNS

        self._conn = psycopg.connect(dsn)
        cols = ", ".join(COLUMNS)
        marks = ", ".join("%s" for _ in COLUMNS)
        self._sql = f"INSERT INTO tokentrace.spans ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        self._json = (COLUMNS.index("attributes"), COLUMNS.index("resource"))
        self._days: set[dt.date] = set()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult
        from psycopg.types.json import Jsonb

        from tokentrace.exporter.spans import span_data
        from tokentrace.store.rows import build_row, dumps

        rows = [build_row(span_data(span)) for span in spans]
        days = sorted({row.start_time.date() for row in rows} - self._days)
        if days:
            self._conn.execute("SELECT tokentrace.ensure_partitions(%s::date[])", (days,))
            self._days.update(days)
        for row in rows:
            values = list(row.values)
            for i in self._json:
                values[i] = Jsonb(values[i], dumps=dumps)
            self._conn.execute(self._sql, values)
        self._conn.commit()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._conn.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class DiscardingExporter:
    """Accepts every batch and stores nothing: the SDK's own ceiling in this process."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class GcClock:
    """CPU time the cyclic garbage collector takes, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            generation = info["generation"]
            self.runs[generation] += 1
            self.seconds[generation] += time.thread_time() - self._started

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)


def phase_peak(dsn: str, n: int, pipeline: str) -> dict[str, Any]:
    """Create ``n`` spans as fast as one thread can; time until all are committed.

    ``pipeline``: ``tokentrace`` (``default_span_processor``), ``naive`` (an INSERT
    per span behind the same processor and batch settings) or ``discard`` (the same
    again with an exporter that stores nothing: what the SDK alone costs).
    """
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tokentrace import pipeline as tt_pipeline
    from tokentrace.processor import TokenEfficiencySpanProcessor

    reset_table(dsn)
    discard = DiscardingExporter()
    if pipeline == "tokentrace":
        processor = tt_pipeline.default_span_processor(dsn)
    else:
        exporter = NaiveInsertExporter(dsn) if pipeline == "naive" else discard
        processor = TokenEfficiencySpanProcessor(
            BatchSpanProcessor(
                exporter,  # type: ignore[arg-type]
                max_queue_size=tt_pipeline.DEFAULT_MAX_QUEUE_SIZE,
                max_export_batch_size=tt_pipeline.DEFAULT_BATCH_SIZE,
                schedule_delay_millis=tt_pipeline.DEFAULT_SCHEDULE_DELAY_MS,
            )
        )
    provider = make_provider(processor)
    maker = SpanMaker(provider)
    # Warm up: connect, create today's partition, fill caches; not timed.
    maker.make(200)
    provider.force_flush()
    reset_table(dsn)
    maker.created = 0
    discard.exported = 0
    gc.collect()
    clock = GcClock()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    maker.make(n)
    produced = time.perf_counter() - t0
    provider.force_flush()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    clock.stop()
    provider.shutdown()
    stored = discard.exported if pipeline == "discard" else count_rows(dsn)
    return {
        "spans": n,
        "stored": stored,
        "seconds": elapsed,
        "rate": stored / elapsed,
        "create_rate": n / produced,
        "cpu_us_per_span": cpu / n * 1e6,
        "gc_us_per_span": sum(clock.seconds) / n * 1e6,
        "gc_runs": clock.runs,
    }


def _queue_full_drops(reader: Any) -> int:
    """The SDK's own count of spans its batch processor dropped for a full queue."""
    data = reader.get_metrics_data()
    dropped = 0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != "otel.sdk.processor.span.processed":
                    continue
                for point in metric.data.data_points:
                    if point.attributes.get("error.type") == "queue_full":
                        dropped += int(point.value)
    return dropped


def phase_steady(dsn: str, seconds: float, rate: int, settings: str) -> dict[str, Any]:
    """Offer ``rate`` spans/s for ``seconds``; count what never reached the table."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tokentrace.exporter import PostgresSpanExporter
    from tokentrace.pipeline import default_span_processor
    from tokentrace.processor import TokenEfficiencySpanProcessor

    reset_table(dsn)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    # The SDK's drop counter is switched on for the batch processor only: the tracer's
    # own per-span metrics would slow the producer.
    os.environ["OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"] = "true"
    try:
        if settings == "tokentrace":
            processor = default_span_processor(dsn)
        else:
            for name in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_SCHEDULE_DELAY"):
                os.environ.pop(name, None)
            processor = TokenEfficiencySpanProcessor(BatchSpanProcessor(PostgresSpanExporter(dsn)))
    finally:
        del os.environ["OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"]
    bsp = processor.delegate
    core = getattr(bsp, "_batch_processor", None)
    queue = getattr(core, "_queue", None)
    capacity = getattr(core, "_max_queue_size", 0)
    batch = getattr(core, "_max_export_batch_size", 0)
    delay = getattr(core, "_schedule_delay_millis", 0)
    provider = make_provider(processor)
    maker = SpanMaker(provider)
    maker.make(200)  # warm up: connection, partition
    provider.force_flush()
    reset_table(dsn)
    maker.created = 0
    gc.collect()
    rss_before = rss_kib("VmRSS")
    peak_reset = reset_peak_rss()
    longest_queue = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    now = t0
    while now < end:
        due = int(rate * (now - t0))
        if due > maker.created:
            maker.make(due - maker.created)
        if queue is not None:
            longest_queue = max(longest_queue, len(queue))
        pause = TICK_S - (time.perf_counter() - now)
        if pause > 0:
            time.sleep(pause)
        now = time.perf_counter()
    due = int(rate * seconds)
    if due > maker.created:
        maker.make(due - maker.created)
    offered_for = time.perf_counter() - t0
    provider.force_flush()
    drained = time.perf_counter() - t0
    rss_peak = rss_kib("VmHWM") if peak_reset else 0
    sdk_drops = _queue_full_drops(reader)
    provider.shutdown()
    created = maker.created
    stored = count_rows(dsn)
    return {
        "settings": settings,
        "queue": capacity,
        "batch": batch,
        "delay_ms": delay,
        "created": created,
        "offered_rate": created / offered_for,
        "stored": stored,
        "dropped": created - stored,
        "dropped_pct": 100.0 * (created - stored) / created if created else 0.0,
        "sdk_queue_full": sdk_drops,
        "drained_s": drained,
        "longest_queue": longest_queue,
        "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": rss_peak / 1024,
        "rss_growth_mib": (rss_peak - rss_before) / 1024 if peak_reset else None,
    }


def phase_queue_memory(count: int) -> dict[str, Any]:
    """Bytes one queued span holds (the span as the processor forwards it)."""
    import tracemalloc

    from tokentrace.pipeline import DEFAULT_MAX_QUEUE_SIZE
    from tokentrace.processor import TokenEfficiencySpanProcessor

    sink = CollectingProcessor()
    maker = SpanMaker(make_provider(TokenEfficiencySpanProcessor(sink)))
    maker.make(100)
    sink.spans.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    maker.make(count)
    held = tracemalloc.get_traced_memory()[0] - before
    # Reading the attributes (as the exporter does) materialises the derived copy.
    for span in sink.spans:
        span.attributes  # noqa: B018
    held_read = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_span = held / count
    return {
        "per_span_bytes": per_span,
        "per_span_bytes_after_read": held_read / count,
        "queue": DEFAULT_MAX_QUEUE_SIZE,
        "full_queue_mib": per_span * DEFAULT_MAX_QUEUE_SIZE / 2**20,
        "full_queue_after_read_mib": held_read / count * DEFAULT_MAX_QUEUE_SIZE / 2**20,
    }


def phase_processor(n: int, runs: int) -> dict[str, Any]:
    """µs per span: processor wrapping a no-op vs the bare SDK with the same no-op.

    ``runs`` pairs of ``n`` spans a side. Timed in CPU time of the creating thread
    (``time.thread_time``), which other processes on a shared machine disturb far
    less than wall time. Each pair's two runs follow each other immediately and
    alternate which side goes first, so a slow spell of the machine lands on both
    sides of a pair; the overhead is the median of the per-pair differences, with
    their interquartile range as its spread.
    """
    from tokentrace.processor import TokenEfficiencySpanProcessor

    def timed(maker: SpanMaker) -> float:
        gc.collect()
        t0 = time.thread_time()
        maker.make(n)
        return (time.thread_time() - t0) / n * 1e6

    bare = SpanMaker(make_provider(NoopProcessor()))
    wrapped = SpanMaker(make_provider(TokenEfficiencySpanProcessor(NoopProcessor())))
    sink = CollectingProcessor()
    collecting = SpanMaker(make_provider(TokenEfficiencySpanProcessor(sink)))
    for maker in (bare, wrapped, collecting):
        maker.make(2_000)  # warm up
    bare_us, wrapped_us, deferred_us = [], [], []
    for run in range(runs):
        if run % 2:
            wrapped_us.append(timed(wrapped))
            bare_us.append(timed(bare))
        else:
            bare_us.append(timed(bare))
            wrapped_us.append(timed(wrapped))
        deferred_us.append(_deferred_us(collecting, sink, max(n // 4, 1)))
    overheads = [w - b for b, w in zip(bare_us, wrapped_us)]
    q1, q3 = _quartiles(overheads)
    return {
        "bare_us": bare_us,
        "wrapped_us": wrapped_us,
        "overhead_us": overheads,
        "deferred_us": deferred_us,
        "bare_median": statistics.median(bare_us),
        "wrapped_median": statistics.median(wrapped_us),
        "overhead_median": statistics.median(overheads),
        "deferred_median": statistics.median(deferred_us),
        "overhead_q1": q1,
        "overhead_q3": q3,
        "overhead_iqr": q3 - q1,
        "pairs": runs,
        "spans_per_run": n,
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles of ``values`` (a single value is both)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def _deferred_us(collecting: SpanMaker, sink: CollectingProcessor, count: int) -> float:
    """µs per span of the first read of the forwarded spans' attributes (the derivation)."""
    sink.spans.clear()
    collecting.make(count)
    spans = sink.spans
    t0 = time.thread_time()
    for span in spans:
        span.attributes  # noqa: B018 - the first read derives the figures
    return (time.thread_time() - t0) / len(spans) * 1e6


def phase_rows(n: int, runs: int) -> dict[str, Any]:
    """CPU µs per span of the exporter's row building, without PostgreSQL.

    The spans of :class:`SpanMaker`, ended through ``TokenEfficiencySpanProcessor``
    (``processed``: the copies it forwards, as the batch processor hands them to the
    exporter) and through no processor (``plain``: SDK ``ReadableSpan``), turned
    into the rows COPY sends by ``PostgresSpanExporter`` (its batch ordering and
    row iterator, everything ``export()`` does before the database). Each
    repetition takes fresh copies (a forwarded span derives once, on first read);
    ``time.thread_time``, median of ``runs``.
    """
    from tokentrace.exporter import PostgresSpanExporter
    from tokentrace.exporter.spans import in_key_order
    from tokentrace.processor import TokenEfficiencySpanProcessor

    exporter = PostgresSpanExporter(dsn="postgresql://unused")  # never connects here
    sinks = {"processed": CollectingProcessor(), "plain": CollectingProcessor()}
    makers = {
        "processed": SpanMaker(make_provider(TokenEfficiencySpanProcessor(sinks["processed"]))),
        "plain": SpanMaker(make_provider(sinks["plain"])),
    }
    out: dict[str, Any] = {}
    for kind, maker in makers.items():
        sink = sinks[kind]
        times = []
        for run in range(runs + 1):
            sink.spans.clear()
            maker.make(n)
            spans = sink.spans
            gc.collect()
            t0 = time.thread_time()
            for _ in exporter._rows(in_key_order(spans)):
                pass
            if run:  # the first is a warm-up
                times.append((time.thread_time() - t0) / n * 1e6)
        out[f"{kind}_us"] = times
        out[f"{kind}_median"] = statistics.median(times)
    exporter.shutdown()
    return out


PHASES: dict[str, Callable[..., dict[str, Any]]] = {
    "rows": phase_rows,
    "copy": phase_copy,
    "peak": phase_peak,
    "steady": phase_steady,
    "queue_memory": phase_queue_memory,
    "processor": phase_processor,
}


# --- driver ---------------------------------------------------------------------------


def run_child(phase: str, src: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one phase in a fresh interpreter and return its JSON result.

    ``src``: a ``src`` directory of another version of tokentrace, imported by the
    child instead of this one (``--baseline-src``).
    """
    cmd = [sys.executable, __file__, "--child", phase, "--child-args", json.dumps(kwargs)]
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode})")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise SystemExit(f"phase {phase} printed no result")


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    import opentelemetry.sdk.version as sdk_version
    import psycopg

    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "opentelemetry-sdk": sdk_version.__version__,
        "psycopg": psycopg.__version__,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def server_version(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


ALL_PHASES = ("peak", "steady", "processor")


def benchmark(dsn: str, quick: bool, runs: int, phases: Sequence[str] = ALL_PHASES) -> dict[str, Any]:
    from tokentrace.pipeline import DEFAULT_BATCH_SIZE

    peak_n = 20_000 if quick else 100_000
    naive_n = 1_000 if quick else 5_000
    steady_s = 5.0 if quick else 60.0
    # Many short pairs rather than a few long runs: see phase_processor. Pairs of
    # 1,000 spans (~30 ms a side) left an IQR of 3.5 µs where pairs of 10,000 left
    # 9.8 µs, in back-to-back runs on this machine (2026-12-03).
    proc_n, proc_pairs = (1_000, 41) if quick else (1_000, 401)
    results: dict[str, Any] = {"machine": machine(), "postgres": server_version(dsn)}
    if "peak" in phases:
        # Interleaved, so a change in the machine's load hits baseline and pipeline alike.
        results["copy"], results["peak"] = [], []
        for _ in range(runs):
            results["copy"].append(run_child("copy", dsn=dsn, n=peak_n, batch=DEFAULT_BATCH_SIZE))
            results["peak"].append(run_child("peak", dsn=dsn, n=peak_n, pipeline="tokentrace"))
        results["naive"] = [run_child("peak", dsn=dsn, n=naive_n, pipeline="naive")]
        results["discard"] = [run_child("peak", dsn=dsn, n=peak_n, pipeline="discard") for _ in range(runs)]
    if "steady" in phases:
        results["steady"] = [
            run_child("steady", dsn=dsn, seconds=steady_s, rate=STEADY_RATE, settings=s)
            for s in ("tokentrace", "sdk-default")
        ]
        results["queue_memory"] = run_child("queue_memory", count=20_000 if quick else 100_000)
    if "processor" in phases:
        results["processor"] = run_child("processor", n=proc_n, runs=proc_pairs)
    return results


COMPARED_PHASES = ("peak", "processor", "rows")


def compare(
    dsn: str, quick: bool, runs: int, phases: Sequence[str], baseline: str
) -> dict[str, Any]:
    """Each phase for this tree and for the tree at ``baseline`` (a ``src`` directory).

    Repetition by repetition, the two sides run back to back in alternating order
    (baseline first in even repetitions), so a slow spell of a shared machine
    lands on both. A raw COPY per repetition is the machine's yardstick.
    """
    from tokentrace.pipeline import DEFAULT_BATCH_SIZE

    peak_n = 20_000 if quick else 100_000
    proc_n, proc_pairs = (1_000, 41) if quick else (1_000, 101)
    rows_n, rows_runs = (2_000, 3) if quick else (10_000, 5)
    sides = {"baseline": baseline, "candidate": None}
    results: dict[str, Any] = {
        "machine": machine(),
        "postgres": server_version(dsn),
        "baseline_src": baseline,
        "copy": [],
    }
    for side in sides:
        for phase in phases:
            results[f"{phase}:{side}"] = []
    for rep in range(runs):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        if "peak" in phases:
            results["copy"].append(run_child("copy", dsn=dsn, n=peak_n, batch=DEFAULT_BATCH_SIZE))
        for phase in phases:
            for side in order:
                src = sides[side]
                if phase == "peak":
                    r = run_child("peak", src, dsn=dsn, n=peak_n, pipeline="tokentrace")
                elif phase == "processor":
                    r = run_child("processor", src, n=proc_n, runs=proc_pairs)
                else:
                    r = run_child("rows", src, n=rows_n, runs=rows_runs)
                results[f"{phase}:{side}"].append(r)
    return results


_COMPARED_FIGURES = (
    ("peak", "rate", "peak, committed spans/s", "{:,.0f}"),
    ("peak", "cpu_us_per_span", "peak, process CPU µs/span", "{:.1f}"),
    ("processor", "overhead_median", "processor over bare SDK, µs/span", "{:+.2f}"),
    ("processor", "deferred_median", "processor's deferred derivation, µs/span", "{:.2f}"),
    ("rows", "processed_median", "exporter rows, processed spans, µs/span", "{:.2f}"),
    ("rows", "plain_median", "exporter rows, plain SDK spans, µs/span", "{:.2f}"),
)


def compare_report(r: dict[str, Any]) -> str:
    lines = [
        f"baseline: {r['baseline_src']}; candidate: this tree",
        "",
        "| measurement | baseline (median) | candidate (median) | candidate / baseline "
        "(median of per-repetition ratios) |",
        "|---|---:|---:|---:|",
    ]
    for phase, key, label, fmt in _COMPARED_FIGURES:
        base, cand = r.get(f"{phase}:baseline"), r.get(f"{phase}:candidate")
        if not base or not cand:
            continue
        ratios = [c[key] / b[key] for b, c in zip(base, cand) if b[key]]
        lines.append(
            f"| {label} | {fmt.format(_median(base, key))} | {fmt.format(_median(cand, key))} "
            f"| {statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)}) |"
        )
    if r.get("copy"):
        lines.append(f"| raw COPY spans/s (yardstick) | {_median(r['copy'], 'rate'):,.0f} | | |")
    return "\n".join(lines)


def _median(items: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(item[key] for item in items))


def report(r: dict[str, Any]) -> str:
    lines = [
        "| measurement | result | same-run baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    if "peak" in r:
        copy_rate = _median(r["copy"], "rate")
        peak_rate = _median(r["peak"], "rate")
        naive_rate = _median(r["naive"], "rate")
        ceiling = _median(r["discard"], "rate")
        peak_cpu = _median(r["peak"], "cpu_us_per_span")
        ceiling_cpu = _median(r["discard"], "cpu_us_per_span")
        lines += [
            f"| peak, committed spans/s (median of {len(r['peak'])}) | {peak_rate:,.0f} "
            f"| raw COPY {copy_rate:,.0f} | {peak_rate / copy_rate:.2f}× COPY "
            f"| ≥ {TARGET_PEAK:,.0f} | {'yes' if peak_rate >= TARGET_PEAK else 'NO'} |",
            f"| peak, same pipeline with an exporter that stores nothing, spans/s | {ceiling:,.0f} "
            f"| – | ours {peak_rate / ceiling:.2f}× that | – | – |",
            f"| peak, process CPU µs per span (ours; storing nothing; raw COPY) | {peak_cpu:.1f} "
            f"| {ceiling_cpu:.1f}; {_median(r['copy'], 'cpu_us_per_span'):.1f} "
            f"| export adds {peak_cpu - ceiling_cpu:.1f} µs | – | – |",
            f"| peak, naive INSERT-per-span exporter, spans/s | {naive_rate:,.0f} "
            f"| raw COPY {copy_rate:,.0f} | {naive_rate / copy_rate:.3f}× COPY "
            f"(ours {peak_rate / naive_rate:.1f}× naive) | – | – |",
        ]
    if "steady" in r:
        ours, sdk = r["steady"]
        mem = r["queue_memory"]
        lines += [
            f"| steady {STEADY_RATE:,}/s × {ours['created'] / STEADY_RATE:.0f} s, our defaults (queue "
            f"{ours['queue']:,}, batch {ours['batch']:,}, delay {ours['delay_ms']:,.0f} ms): dropped "
            f"| {ours['dropped']:,} of {ours['created']:,} ({ours['dropped_pct']:.1f} %); SDK counter "
            f"{ours['sdk_queue_full']:,} | SDK defaults (2,048 / 512 / 5 s): {sdk['dropped']:,} of "
            f"{sdk['created']:,} ({sdk['dropped_pct']:.1f} %); SDK counter {sdk['sdk_queue_full']:,} "
            f"| – | 0 | {'yes' if ours['dropped'] == 0 else 'NO'} |",
            f"| steady, offered rate reached, spans/s | {ours['offered_rate']:,.0f} "
            f"| SDK defaults: {sdk['offered_rate']:,.0f} | – | {STEADY_RATE:,} | – |",
            f"| steady, peak RSS growth; longest queue | {_mib(ours['rss_growth_mib'])}; "
            f"{ours['longest_queue']:,} spans | SDK defaults: {_mib(sdk['rss_growth_mib'])}; "
            f"{sdk['longest_queue']:,} spans | – | – | – |",
            f"| memory per queued span; a full queue of {mem['queue']:,} | {mem['per_span_bytes']:,.0f} B "
            f"({mem['per_span_bytes_after_read']:,.0f} B once derived); {mem['full_queue_mib']:,.0f} MiB "
            f"({mem['full_queue_after_read_mib']:,.0f} MiB) | SDK default queue 2,048: "
            f"{mem['per_span_bytes'] * 2048 / 2**20:.1f} MiB | – | – | – |",
        ]
    if "processor" in r:
        p = r["processor"]
        lines += [
            f"| processor cost over bare SDK, µs/span (median of {len(p['overhead_us'])} pairs "
            f"of {p.get('spans_per_run', 0):,} spans; IQR of the pairs' differences) "
            f"| {p['overhead_median']:+.2f} (IQR {_iqr(p)}; "
            f"{p['wrapped_median']:.2f} vs {p['bare_median']:.2f}) "
            f"| bare SDK {p['bare_median']:.2f} | {p['wrapped_median'] / p['bare_median']:.3f}× bare "
            f"| ≤ {TARGET_OVERHEAD_US} | {'yes' if p['overhead_median'] <= TARGET_OVERHEAD_US else 'NO'} |",
            f"| derivation deferred to the exporter's first read, µs/span | {p['deferred_median']:.2f} "
            f"| – | – | – | – |",
        ]
    return "\n".join(lines)


def _iqr(p: dict[str, Any]) -> str:
    """The per-pair differences' interquartile range (results of older runs lack it)."""
    if "overhead_q1" not in p:
        return "n/a"
    return f"{p['overhead_q1']:+.2f} to {p['overhead_q3']:+.2f}, width {p['overhead_iqr']:.2f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def details(r: dict[str, Any]) -> str:
    out = [f"machine: {json.dumps(r['machine'])}; PostgreSQL {r['postgres']}"]
    if "peak" in r:
        out.append("raw COPY spans/s: " + ", ".join(f"{x['rate']:,.0f}" for x in r["copy"]))
        for key, label in (("peak", "peak committed"), ("discard", "storing nothing"), ("naive", "naive")):
            out.append(
                f"{label} spans/s: "
                + ", ".join(
                    f"{x['rate']:,.0f} (created at {x['create_rate']:,.0f}/s, {x['cpu_us_per_span']:.0f} µs "
                    f"CPU/span, of which GC {x['gc_us_per_span']:.0f}; GC runs {x['gc_runs']})"
                    for x in r[key]
                )
            )
    for s in r.get("steady", ()):
        out.append(
            f"steady {s['settings']}: offered {s['offered_rate']:,.0f}/s, created {s['created']:,}, "
            f"stored {s['stored']:,}, dropped {s['dropped']:,} (SDK counter {s['sdk_queue_full']:,}), "
            f"drained after {s['drained_s']:.1f} s, longest queue {s['longest_queue']:,}, "
            f"RSS {s['rss_before_mib']:.0f} → peak {s['rss_peak_mib']:.0f} MiB"
        )
    if "processor" in r:
        p = r["processor"]
        out.append(
            "processor µs/span: bare "
            + ", ".join(f"{x:.2f}" for x in p["bare_us"])
            + "; wrapped "
            + ", ".join(f"{x:.2f}" for x in p["wrapped_us"])
            + "; deferred "
            + ", ".join(f"{x:.2f}" for x in p["deferred_us"])
            + "; per-pair overhead "
            + ", ".join(f"{x:+.2f}" for x in p["overhead_us"])
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a fresh embedded one)")
    parser.add_argument("--runs", type=int, help="repetitions of peak and COPY (default 3, quick 1)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--phases",
        help=f"comma-separated subset of {','.join(ALL_PHASES)} (default: all); "
        f"with --baseline-src, of {','.join(COMPARED_PHASES)}",
    )
    parser.add_argument(
        "--baseline-src",
        help="a src directory of another version (e.g. `git archive` of main): run "
        f"each phase of {','.join(COMPARED_PHASES)} for it and for this tree, alternating, "
        "and report both with their ratio (default phases then: peak,processor,rows)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = PHASES[args.child](**json.loads(args.child_args or "{}"))
        print(json.dumps(result))
        return 0

    runs = args.runs or (1 if args.quick else 3)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        dsn = args.dsn
        if not dsn:
            from tokentrace.store.embedded import embedded_dsn, stop_embedded

            dsn = embedded_dsn(Path(tmp) / "pgdata")
        try:
            from tokentrace.store.migrate import migrate

            migrate(dsn)
            if args.baseline_src:
                phases = args.phases.split(",") if args.phases else list(COMPARED_PHASES)
                unknown = set(phases) - set(COMPARED_PHASES)
                if unknown:
                    parser.error(f"--baseline-src compares only {','.join(COMPARED_PHASES)}")
                results = compare(dsn, args.quick, runs, phases, args.baseline_src)
            else:
                phases = args.phases.split(",") if args.phases else list(ALL_PHASES)
                results = benchmark(dsn, args.quick, runs, phases)
        finally:
            if not args.dsn:
                stop_embedded()
    results["wall_s"] = time.perf_counter() - started
    results["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if args.baseline_src:
        print(compare_report(results))
    else:
        print(report(results))
        print()
        print(details(results))
    print(f"wall time {results['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
