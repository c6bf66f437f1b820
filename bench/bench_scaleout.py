"""Scale-out benchmark (issue 7): spans/s committed by one vs two ``tokentrace serve``.

One run, one load generator, one PostgreSQL. The workload is fixed: ``--spans``
GenAI-shaped spans (4 spans per trace: an agent span and three chat calls with
token counts), pre-encoded as OTLP ``ExportTraceServiceRequest`` messages of
``--batch`` spans each, the batch size of ``collector-config/gateway.yaml``. Every
request carries whole traces, so sending request *i* to receiver *i mod n* is
routing by trace id, as the Collector's ``load_balancing`` exporter does.

Phases, each on an emptied ``tokentrace.spans`` after a ``CHECKPOINT``:

receivers=1 / receivers=2
    fresh ``tokentrace serve`` processes (default settings: 4 database connections
    each) on loopback; ``--inflight`` sender threads (the same number in both
    phases) push the requests over OTLP/gRPC as fast as they are acknowledged.
    A receiver acknowledges only after the COPY is committed, so
    spans/s = spans / (last acknowledgement − first send). The stored row count is
    checked against the workload afterwards (each span once).
copy-only
    the same spans, decoded and built into rows beforehand, written straight through
    ``SpanWriter`` (binary COPY, one transaction per batch) from 4 threads: what
    PostgreSQL alone takes on this machine, without OTLP decoding or gRPC.

CPU seconds used during each phase are read for the receivers, the PostgreSQL
processes (embedded server only) and the load generator, as a share of the
machine's cores, to show which one is the bottleneck.

Usage::

    python bench/bench_scaleout.py              # 300,000 spans, 2 rounds (a few minutes)
    python bench/bench_scaleout.py --quick      # smoke run
    python bench/bench_scaleout.py --dsn postgresql://...   # an existing server

Without ``--dsn`` a fresh embedded PostgreSQL is started in a temporary
directory. ``tokentrace.spans`` of the target database is emptied between phases:
never point ``--dsn`` at real data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
MODELS = (
    ("llama3.1:8b", "ollama"),
    ("qwen2.5:7b-instruct", "ollama"),
    ("mistral-small-24b", "vllm"),
    ("gpt-4o-mini", "openai"),
)
SPANS_PER_TRACE = 4


# --- the workload ---------------------------------------------------------------------
def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_requests(spans: int, batch: int, seed: int = 7) -> list[bytes]:
    """``spans`` spans with unique ids, as serialized requests of ``batch`` spans."""
    rng = random.Random(seed)
    run = os.urandom(6)
    now_ns = time.time_ns()
    traces_per_request = max(1, batch // SPANS_PER_TRACE)
    requests: list[bytes] = []
    trace_no = 0
    made = 0
    while made < spans:
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(
            [_kv("service.name", f"bench-app-{len(requests) % 8}"), _kv("host.name", "bench")]
        )
        scope = resource_spans.scope_spans.add()
        scope.scope.name = "bench.scaleout"
        for _ in range(traces_per_request):
            if made >= spans:
                break
            trace_no += 1
            trace_id = run + trace_no.to_bytes(10, "big")
            start = now_ns - rng.randrange(1, 600) * 1_000_000_000
            root_id = (trace_no * SPANS_PER_TRACE).to_bytes(8, "big")
            root = scope.spans.add()
            root.trace_id, root.span_id, root.name = trace_id, root_id, "agent run"
            root.kind = Span.SPAN_KIND_SERVER
            root.start_time_unix_nano = start
            root.end_time_unix_nano = start + 3_000_000_000
            made += 1
            for call in range(1, SPANS_PER_TRACE):
                if made >= spans:
                    break
                model, provider = MODELS[(trace_no + call) % len(MODELS)]
                output_tokens = rng.randrange(20, 800)
                duration_ns = output_tokens * rng.randrange(8_000_000, 40_000_000) // 1
                span = scope.spans.add()
                span.trace_id = trace_id
                span.span_id = (trace_no * SPANS_PER_TRACE + call).to_bytes(8, "big")
                span.parent_span_id = root_id
                span.name = f"chat {model}"
                span.kind = Span.SPAN_KIND_CLIENT
                span.start_time_unix_nano = start + call * 1_000_000
                span.end_time_unix_nano = start + call * 1_000_000 + duration_ns
                span.status.code = Status.STATUS_CODE_OK
                span.attributes.extend(
                    [
                        _kv("gen_ai.operation.name", "chat"),
                        _kv("gen_ai.provider.name", provider),
                        _kv("gen_ai.request.model", model),
                        _kv("gen_ai.response.model", model),
                        _kv("gen_ai.usage.input_tokens", rng.randrange(50, 2000)),
                        _kv("gen_ai.usage.output_tokens", output_tokens),
                        _kv("server.address", "127.0.0.1"),
                        _kv("server.port", 11434),
                    ]
                )
                made += 1
        requests.append(request.SerializeToString())
    return requests


# --- helpers --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reset(dsn: str) -> None:
    """Empty tables, rollups included (if this schema keeps them), and checkpoint."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE tokentrace.spans")
        rollups = conn.execute("SELECT to_regclass('tokentrace.span_rollups')").fetchone()
        if rollups and rollups[0] is not None:
            conn.execute("TRUNCATE tokentrace.span_rollups")
        conn.execute("CHECKPOINT")


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tokentrace.spans").fetchone()
        return int(row[0]) if row else 0


def postmaster_of(dsn: str) -> psutil.Process | None:
    """The server's main process, when it runs on this machine and we may read it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:  # while this backend is alive
            backend = psutil.Process(int(row[0])) if row else None
            return backend.parent() if backend else None
        except psutil.Error:
            return None


def postgres_cpu(postmaster: psutil.Process | None) -> dict[int, float]:
    """CPU seconds so far of the server and each of its processes (backends included)."""
    if postmaster is None:
        return {}
    seconds: dict[int, float] = {}
    try:
        processes = [postmaster, *postmaster.children(recursive=True)]
    except psutil.Error:
        return {}
    for proc in processes:
        try:
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
        except psutil.Error:
            pass
    return seconds


def postgres_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the second one."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine so far (all cores)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


class Receiver:
    """One ``tokentrace serve`` process on loopback."""

    def __init__(self, dsn: str, log_dir: Path, name: str) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        env = dict(os.environ, TOKENTRACE_DSN=dsn)
        env.pop("TOKENTRACE_AUTH_TOKEN", None)
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tokentrace", "serve",
                 "--grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
                 "--http-endpoint", f"127.0.0.1:{self.http_port}"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tokentrace serve exited:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("tokentrace serve did not become healthy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- phases ---------------------------------------------------------------------------
def phase_receivers(
    dsn: str,
    requests: list[bytes],
    spans: int,
    n: int,
    inflight: int,
    log_dir: Path,
    gzip: bool,
) -> dict[str, Any]:
    reset(dsn)
    receivers = [Receiver(dsn, log_dir, f"serve-{n}-{i}") for i in range(n)]
    try:
        for receiver in receivers:
            receiver.wait_ready()
        channels = [grpc.insecure_channel(f"127.0.0.1:{r.grpc_port}") for r in receivers]
        calls = [ch.unary_unary(EXPORT_METHOD) for ch in channels]  # bytes in, bytes out
        compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        for call in calls:  # connect before the clock starts
            call(b"", timeout=30, compression=compression)
        next_index = iter(range(len(requests)))
        lock = threading.Lock()
        retries = [0]

        def sender() -> None:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                call = calls[index % n]
                while True:
                    try:
                        call(requests[index], timeout=120, compression=compression)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() not in RETRYABLE:
                            raise
                        with lock:
                            retries[0] += 1
                        time.sleep(0.05)

        postmaster = postmaster_of(dsn)
        me = psutil.Process()
        pg_before = postgres_cpu(postmaster)
        busy_before = machine_busy_seconds()
        before = (cpu_seconds([r.ps for r in receivers]), 0.0, cpu_seconds([me]))
        started = time.perf_counter()
        with ThreadPoolExecutor(inflight) as pool:
            for future in [pool.submit(sender) for _ in range(inflight)]:
                future.result()
        elapsed = time.perf_counter() - started
        # Read before the receivers stop: their backends end with their connections.
        pg_used = postgres_cpu_delta(pg_before, postgres_cpu(postmaster))
        busy = machine_busy_seconds() - busy_before
        after = (cpu_seconds([r.ps for r in receivers]), pg_used, cpu_seconds([me]))
        for ch in channels:
            ch.close()
    finally:
        for receiver in receivers:
            receiver.stop()
    stored = count_rows(dsn)
    cores = psutil.cpu_count() or 1
    ours = sum(a - b for a, b in zip(after, before))
    return {
        "phase": f"receivers={n}",
        "spans": spans,
        "stored": stored,
        "seconds": elapsed,
        "spans_per_s": spans / elapsed,
        "retries": retries[0],
        "cpu_share": {
            name: (a - b) / elapsed / cores
            for name, a, b in zip(("receivers", "postgres", "load_generator"), after, before)
        }
        | {
            "machine": busy / elapsed / cores,
            "other_processes": max(0.0, busy - ours) / elapsed / cores,
        },
        # CPU time per stored span: unlike spans/s, barely moved by other load.
        "cpu_us_per_span": {
            "receivers": (after[0] - before[0]) / spans * 1e6,
            "postgres": pg_used / spans * 1e6 if postmaster is not None else None,
        },
        "postgres_measured": postmaster is not None,
    }


def phase_copy_only(dsn: str, requests: list[bytes], spans: int, threads: int) -> dict[str, Any]:
    from tokentrace.receiver.decode import decode_protobuf
    from tokentrace.store.rows import build_row
    from tokentrace.store.writer import SpanWriter

    batches = [[build_row(s) for s in decode_protobuf(body).spans] for body in requests]
    reset(dsn)
    writer = SpanWriter(dsn, max_connections=threads)
    writer.write(batches[0][:1])  # open a connection and create the day partitions
    reset(dsn)
    postmaster = postmaster_of(dsn)
    me = psutil.Process()
    pg_before, me_before = postgres_cpu(postmaster), cpu_seconds([me])
    busy_before = machine_busy_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(writer.write, batches))
    elapsed = time.perf_counter() - started
    pg_used = postgres_cpu_delta(pg_before, postgres_cpu(postmaster))
    me_used = cpu_seconds([me]) - me_before
    busy = machine_busy_seconds() - busy_before
    writer.close()
    cores = psutil.cpu_count() or 1
    return {
        "phase": "copy-only",
        "spans": spans,
        "stored": count_rows(dsn),
        "seconds": elapsed,
        "spans_per_s": spans / elapsed,
        "cpu_share": {
            "postgres": pg_used / elapsed / cores,
            "load_generator": me_used / elapsed / cores,
            "machine": busy / elapsed / cores,
            "other_processes": max(0.0, busy - pg_used - me_used) / elapsed / cores,
        },
        "cpu_us_per_span": {
            "writer": me_used / spans * 1e6,
            "postgres": pg_used / spans * 1e6 if postmaster is not None else None,
        },
        "postgres_measured": postmaster is not None,
    }


# --- the run --------------------------------------------------------------------------
def benchmark(dsn: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    requests = make_requests(args.spans, args.batch)
    sizes = [len(r) for r in requests]
    median_kib = statistics.median(sizes) / 1024
    built_s = time.perf_counter() - t0
    print(
        f"workload: {args.spans:,} spans in {len(requests)} requests "
        f"(median {median_kib:.0f} KiB), built in {built_s:.1f}s",
        file=sys.stderr,
    )
    # The day partitions the workload needs exist before any clock starts: in
    # production they are created once per day, not per request. (Creating them from
    # several connections at once can fail; see docs/scaling.md.)
    today = dt.datetime.now(dt.timezone.utc).date()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tokentrace.ensure_partitions(%s::date[])",
            ([today - dt.timedelta(days=1), today],),
        )
    phases: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for n in (1, 2):
            result = phase_receivers(
                dsn, requests, args.spans, n, args.inflight, log_dir, args.gzip
            )
            result["round"] = round_no
            phases.append(result)
            print(
                f"round {round_no} {result['phase']}: {result['spans_per_s']:,.0f} spans/s "
                f"({result['stored']:,} stored)",
                file=sys.stderr,
            )
    copy = phase_copy_only(dsn, requests, args.spans, 4)
    phases.append(copy)
    print(f"copy-only: {copy['spans_per_s']:,.0f} spans/s", file=sys.stderr)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "server_version": str(row[0]) if row else "?",
        "spans": args.spans,
        "batch": args.batch,
        "inflight": args.inflight,
        "gzip": args.gzip,
        "rounds": args.rounds,
        "request_bytes_median": statistics.median(sizes),
        "phases": phases,
    }


def summary(results: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ("receivers=1", "receivers=2", "copy-only"):
        rates = [p["spans_per_s"] for p in results["phases"] if p["phase"] == name]
        if rates:
            out[name] = statistics.median(rates)
    return out


def report(results: dict[str, Any]) -> str:
    request_kib = results["request_bytes_median"] / 1024
    gzip = "on" if results["gzip"] else "off"
    header = (
        "| phase | round | spans/s committed | seconds | stored "
        "| CPU: receivers | postgres | load gen | other processes | machine busy "
        "| CPU µs/span: receivers or writer | postgres |"
    )
    lines = [
        f"tokentrace scale-out benchmark — {results['date']}",
        f"machine: {results['machine']}",
        (
            f"workload: {results['spans']:,} spans, {results['batch']} spans/request "
            f"({request_kib:.0f} KiB median), {results['inflight']} requests in flight, gzip {gzip}"
        ),
        "",
        header,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in results["phases"]:
        cpu = p["cpu_share"]
        per_span = p["cpu_us_per_span"]
        postgres = _pct(cpu.get("postgres")) if p["postgres_measured"] else "n/a"
        cells = [
            p["phase"],
            str(p.get("round", "-")),
            f"{p['spans_per_s']:,.0f}",
            f"{p['seconds']:.1f}",
            f"{p['stored']:,}",
            _pct(cpu.get("receivers")),
            postgres,
            _pct(cpu.get("load_generator")),
            _pct(cpu.get("other_processes")),
            _pct(cpu.get("machine")),
            _us(per_span.get("receivers", per_span.get("writer"))),
            _us(per_span.get("postgres")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    med = summary(results)
    lines += ["", "median spans/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items())]
    if "receivers=1" in med and "receivers=2" in med:
        lines.append(f"two receivers / one: {med['receivers=2'] / med['receivers=1']:.2f}×")
    for name in ("receivers=1", "receivers=2"):
        costs = [p["cpu_us_per_span"]["receivers"] for p in results["phases"] if p["phase"] == name]
        if costs:
            lines.append(f"median receiver CPU per span, {name}: {statistics.median(costs):.0f} µs")
    lines.append(
        "CPU shares are of all cores (100% = every core busy for the whole phase); "
        "'other processes' is CPU used by anything else on the machine during the phase."
    )
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run (40,000 spans, 1 round)")
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a fresh embedded one)")
    parser.add_argument("--spans", type=int, help="spans per phase (default 300,000)")
    parser.add_argument("--batch", type=int, default=2048, help="spans per request (default 2048)")
    parser.add_argument("--inflight", type=int, default=8, help="concurrent requests (default 8)")
    parser.add_argument(
        "--rounds", type=int, help="repetitions of the two receiver phases (default 2)"
    )
    parser.add_argument(
        "--gzip", action="store_true", help="gzip requests, as the Collector does by default"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    args.spans = args.spans or (40_000 if args.quick else 300_000)
    args.rounds = args.rounds or (1 if args.quick else 2)

    with tempfile.TemporaryDirectory(prefix="tokentrace-scaleout-") as tmp:
        log_dir = Path(tmp)
        dsn = args.dsn
        if not dsn:
            from tokentrace.store.embedded import embedded_dsn

            dsn = embedded_dsn(Path(tmp) / "pgdata")
        try:
            from tokentrace.store.migrate import migrate

            migrate(dsn)
            results = benchmark(dsn, args, log_dir)
        finally:
            if not args.dsn:
                from tokentrace.store.embedded import stop_embedded

                stop_embedded()
    results["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["machine"] = (
        f"{platform.system()} {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"PostgreSQL {results['server_version']}"
    )
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
