"""Soak benchmark (issue 6): a fixed rate through ``tokentrace serve`` for minutes.

A load generator (its own process) makes GenAI chat spans with the OpenTelemetry
SDK at a fixed rate and sends them with the official OTLP/gRPC exporter
(``BatchSpanProcessor``, as an application would) to a ``tokentrace serve``
process on loopback, which stores them in PostgreSQL. Every ``--sample-seconds``
this script records:

* spans/s committed (PostgreSQL's own insert counter for the span partitions),
* the receiver's resident memory (RSS, psutil) and its thread count,
* the generator's backlog (spans made but not yet acknowledged) and its failed
  exports, and the receiver's WARNING/ERROR log lines.

At the end it stops the generator (which flushes), checks that every span made was
stored exactly once, stops the receiver with SIGTERM (it must exit 0) and prints
the table and a verdict: a least-squares fit of RSS over the second half of the
run (after warm-up) must not show growth beyond noise, the committed rate must
keep up with the offered rate, and there must be no errors.

Usage::

    python bench/bench_soak.py                      # 10 minutes at 2,000 spans/s
    python bench/bench_soak.py --quick              # 1 minute
    python bench/bench_soak.py --minutes 30 --rate 5000 --dsn postgresql://...

Without ``--dsn`` a fresh embedded PostgreSQL runs in a temporary directory (with
``--dsn`` the target's ``tokentrace.spans`` is *not* emptied; counts are taken
for this run's service name). Exit status 0 when the verdict is a pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_PREFIX = "soak"
MODELS = ("llama3.2", "qwen2.5:7b", "mistral-7b-instruct", "phi3:mini", "gemma2:9b")
# What counts as "no growth": over the second half, the fitted RSS growth must stay
# under this many MiB, or this fraction of the mean RSS, whichever is larger.
GROWTH_TOLERANCE_MIB = 4.0
GROWTH_TOLERANCE_FRACTION = 0.03


# --- the load generator (run as a child process with --generator) -------------------
def run_generator(endpoint: str, rate: float, seconds: float, service: str) -> int:
    """Make ``rate`` spans/s for ``seconds`` and export them; a JSON status line per second."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.trace import SpanKind

    class Counting(SpanExporter):
        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner
            self.ok = 0
            self.failed_batches = 0
            self.failed_spans = 0
            self.lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            result = self.inner.export(spans)
            with self.lock:
                if result is SpanExportResult.SUCCESS:
                    self.ok += len(spans)
                else:
                    self.failed_batches += 1
                    self.failed_spans += len(spans)
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

    counting = Counting(OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=30))
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(
            counting, max_queue_size=500_000, max_export_batch_size=512, schedule_delay_millis=200
        )
    )
    tracer = provider.get_tracer("tokentrace-soak")
    rng = random.Random(6)
    made = 0
    began = time.monotonic()
    next_report = began + 1.0

    def report(final: bool = False) -> None:
        with counting.lock:
            line = {
                "t": round(time.monotonic() - began, 3),
                "made": made,
                "ok": counting.ok,
                "failed_batches": counting.failed_batches,
                "failed_spans": counting.failed_spans,
                "final": final,
            }
        print(json.dumps(line), flush=True)

    tick = 0.01  # spans are made in small bursts every 10 ms, on a fixed schedule
    while True:
        now = time.monotonic()
        elapsed = now - began
        if elapsed >= seconds:
            break
        due = int(min(elapsed + tick, seconds) * rate)
        while made < due:
            model = MODELS[made % len(MODELS)]
            output = rng.randint(20, 400)
            span = tracer.start_span(
                f"chat {model}",
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "ollama",
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": model,
                    "gen_ai.usage.input_tokens": rng.randint(10, 2000),
                    "gen_ai.usage.output_tokens": output,
                    "server.address": "127.0.0.1",
                    "server.port": 11434,
                },
            )
            span.end()
            made += 1
        if now >= next_report:
            report()
            next_report += 1.0
        delay = began + (int(elapsed / tick) + 1) * tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    provider.shutdown()  # flushes the queue through the exporter, retries included
    report(final=True)
    return 0 if counting.failed_batches == 0 and counting.ok == made else 1


# --- the receiver ---------------------------------------------------------------------
class Serve:
    """``tokentrace serve`` as a child process on free loopback ports."""

    def __init__(self, dsn: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "tokentrace", "serve",
                "--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0",
                "--dsn", dsn,
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.problems: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.grpc_port = int(self.wait_for(r"OTLP/gRPC listening on 127\.0\.0\.1:(\d+)").group(1))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line):
                self.problems.append(line.rstrip())
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise RuntimeError(f"tokentrace serve never logged {pattern!r}:\n{''.join(self.log)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        return code


# --- measuring ------------------------------------------------------------------------
@dataclass
class Sample:
    t: float
    committed: int  # spans inserted so far (PostgreSQL's counter)
    rate: float  # spans/s committed since the previous sample
    rss_mib: float
    threads: int
    made: int
    acked: int
    failed_batches: int
    log_problems: int


@dataclass
class Generator:
    process: subprocess.Popen[str]
    status: dict[str, Any] = field(default_factory=dict)
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                try:
                    self.status = json.loads(line)
                except ValueError:
                    pass

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def join(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=30)


def inserted(conn: Any) -> int:
    """Rows inserted into the span partitions, from the statistics collector (cheap)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables "
        "WHERE schemaname = 'tokentrace' AND relname ~ '^spans_[0-9]{8}$'"
    ).fetchone()
    return int(row[0])


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def machine() -> str:
    try:
        free = subprocess.run(
            ["free", "-h"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        mem = free.splitlines()[1].split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        mem = "?"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs (nproc), {mem} RAM (free -h), {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, load average {load}"
    )


def soak(args: argparse.Namespace) -> int:
    import psutil
    import psycopg

    from tokentrace.store.embedded import embedded_dsn, stop_embedded
    from tokentrace.store.migrate import migrate

    seconds = 60.0 if args.quick else args.minutes * 60.0
    workdir = Path(tempfile.mkdtemp(prefix="tokentrace-soak-"))
    own_pg = not args.dsn
    dsn = args.dsn or embedded_dsn(workdir / "pgdata")
    migrate(dsn)
    env = dict(os.environ, TOKENTRACE_DATA_DIR=str(workdir / "unused"))
    service = f"{SERVICE_PREFIX}-{int(time.time())}"
    started_at = dt.datetime.now(dt.timezone.utc)
    print(f"soak: {seconds / 60:g} min at {args.rate:,.0f} spans/s over OTLP/gRPC; {machine()}")
    serve = Serve(dsn, env)
    receiver = psutil.Process(serve.process.pid)
    generator: Generator | None = None
    samples: list[Sample] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            base = inserted(conn)
            generator = Generator(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--generator",
                        "--endpoint",
                        f"http://127.0.0.1:{serve.grpc_port}",
                        "--rate",
                        str(args.rate),
                        "--seconds",
                        str(seconds),
                        "--service",
                        service,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
            generator.start_reading()
            began = time.monotonic()
            previous_t, previous_n = 0.0, 0
            samples.append(
                Sample(
                    0.0,
                    0,
                    0.0,
                    receiver.memory_info().rss / 2**20,
                    receiver.num_threads(),
                    0,
                    0,
                    0,
                    len(serve.problems),
                )
            )
            print(_header())
            print(_row(samples[-1]))
            next_t = args.sample_seconds
            while next_t <= seconds + 1e-6:
                time.sleep(max(began + next_t - time.monotonic(), 0))
                t = time.monotonic() - began
                n = inserted(conn) - base
                status = generator.status
                sample = Sample(
                    t=t,
                    committed=n,
                    rate=(n - previous_n) / (t - previous_t),
                    rss_mib=receiver.memory_info().rss / 2**20,
                    threads=receiver.num_threads(),
                    made=int(status.get("made", 0)),
                    acked=int(status.get("ok", 0)),
                    failed_batches=int(status.get("failed_batches", 0)),
                    log_problems=len(serve.problems),
                )
                samples.append(sample)
                print(_row(sample), flush=True)
                previous_t, previous_n = t, n
                next_t += args.sample_seconds
            code = generator.process.wait(timeout=120)
            generator.join()
            final = generator.status
            stderr = generator.process.stderr.read() if generator.process.stderr else ""
            time.sleep(1.0)
            stored, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM tokentrace.spans "
                "WHERE service_name = %s",
                (service,),
            ).fetchone()  # type: ignore[misc]
            end_rss = receiver.memory_info().rss / 2**20
    finally:
        if generator is not None and generator.process.poll() is None:
            generator.process.kill()
            generator.process.wait()
        serve_code = serve.stop()
        if own_pg:
            stop_embedded()
            shutil.rmtree(workdir, ignore_errors=True)
    return _verdict(
        args, seconds, samples, final, code, stderr, int(stored), int(distinct), end_rss,
        serve_code, serve.problems, started_at,
    )  # fmt: skip


def _header() -> str:
    return (
        f"{'t (s)':>7} {'committed':>10} {'spans/s':>9} {'RSS MiB':>8} {'threads':>7} "
        f"{'backlog':>8} {'failed':>6} {'log W/E':>7}"
    )


def _row(s: Sample) -> str:
    return (
        f"{s.t:7.1f} {s.committed:10,} {s.rate:9,.0f} {s.rss_mib:8.1f} {s.threads:7d} "
        f"{s.made - s.acked:8,} {s.failed_batches:6d} {s.log_problems:7d}"
    )


def _verdict(
    args: argparse.Namespace,
    seconds: float,
    samples: list[Sample],
    final: dict[str, Any],
    generator_code: int,
    generator_stderr: str,
    stored: int,
    distinct: int,
    end_rss: float,
    serve_code: int,
    problems: list[str],
    started_at: dt.datetime,
) -> int:
    made = int(final.get("made", 0))
    acked = int(final.get("ok", 0))
    failed = int(final.get("failed_batches", 0))
    half = [s for s in samples if s.t >= seconds / 2]
    xs = [s.t / 60 for s in half]
    slope = fit_slope(xs, [s.rss_mib for s in half]) if len(half) >= 3 else 0.0
    growth = slope * (xs[-1] - xs[0]) if len(half) >= 3 else 0.0
    mean_rss = statistics.fmean(s.rss_mib for s in half) if half else 0.0
    tolerance = max(GROWTH_TOLERANCE_MIB, GROWTH_TOLERANCE_FRACTION * mean_rss)
    rates = [s.rate for s in samples[1:]]
    steady = [s.rate for s in half]
    print()
    print(f"started {started_at:%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"offered {args.rate:,.0f} spans/s for {seconds:.0f} s: made {made:,}, acknowledged "
          f"{acked:,}, failed batches {failed}, generator exit {generator_code}")  # fmt: skip
    print(f"stored {stored:,} rows, {distinct:,} distinct (trace_id, span_id); "
          f"tokentrace serve exit status {serve_code} after SIGTERM")  # fmt: skip
    print(f"receiver RSS: start {samples[0].rss_mib:.1f} MiB, after warm-up "
          f"{half[0].rss_mib if half else 0:.1f} MiB, end {end_rss:.1f} MiB, max "
          f"{max(s.rss_mib for s in samples):.1f} MiB")  # fmt: skip
    print(f"second half: RSS slope {slope:+.3f} MiB/min (fitted growth {growth:+.2f} MiB over "
          f"{(xs[-1] - xs[0]) if xs else 0:.1f} min; tolerance {tolerance:.1f} MiB)")  # fmt: skip
    if rates:
        print(f"committed spans/s per {args.sample_seconds:g} s: min {min(rates):,.0f}, median "
              f"{statistics.median(rates):,.0f}, max {max(rates):,.0f}; second half mean "
              f"{statistics.fmean(steady) if steady else 0:,.0f}")  # fmt: skip
    backlog = [s.made - s.acked for s in half]
    if backlog:
        print(f"generator backlog over the second half: max {max(backlog):,} spans")
    failures = []
    if generator_code != 0 or failed or acked != made:
        failures.append("exports failed")
    if stored != made or distinct != stored:
        failures.append(f"stored {stored} (distinct {distinct}) of {made} made")
    if serve_code != 0:
        failures.append(f"serve exit status {serve_code}")
    if problems:
        failures.append(f"{len(problems)} WARNING/ERROR log lines")
    if growth > tolerance:
        failures.append(f"memory grows ({growth:+.1f} MiB over the second half)")
    if steady and statistics.fmean(steady) < 0.95 * args.rate:
        failures.append("committed rate fell behind the offered rate")
    for line in problems[:10]:
        print(f"  log: {line}")
    if generator_stderr.strip():
        print("generator stderr (last lines):")
        for line in generator_stderr.strip().splitlines()[-10:]:
            print(f"  {line}")
    if failures:
        print("VERDICT: FAIL — " + "; ".join(failures))
        return 1
    print("VERDICT: PASS — no memory growth trend, the committed rate kept up, no errors, "
          "every span stored once")  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--quick", action="store_true", help="one minute")
    parser.add_argument("--rate", type=float, default=2000.0, help="spans/s offered (default 2000)")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="sampling interval")
    parser.add_argument("--dsn", help="an existing PostgreSQL (default: a fresh embedded one)")
    # The load generator's own mode (this script runs itself as a child process).
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--service", default=SERVICE_PREFIX, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generator:
        return run_generator(args.endpoint, args.rate, args.seconds, args.service)
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
