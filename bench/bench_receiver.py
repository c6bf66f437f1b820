"""Receiver benchmark (issue 3): spans/s committed through OTLP/gRPC and OTLP/HTTP.

The workload: ``--requests`` pre-encoded ``ExportTraceServiceRequest`` messages of
``--spans`` GenAI chat spans each (12 span attributes, 5 resource attributes, the
shape the official SDK sends), the same bytes for every phase. The table of the
target database is emptied before each phase, so every phase stores every span.

Phases, in each of ``--runs`` rounds (the table prints the median):

raw COPY
    the very rows the receiver would store, fetched back as PostgreSQL's own binary
    ``COPY`` payload and loaded again with ``COPY … FROM STDIN``, one transaction per
    request, from ``--clients`` connections: PostgreSQL's limit, nothing else.
SpanWriter
    the same rows, built beforehand as the receiver builds them, written by the store's
    ``SpanWriter`` from ``--clients`` threads: the store's limit (adds Python COPY
    encoding, JSON).
gRPC ×N / HTTP ×N
    ``N`` receiver processes (``tokentrace serve``, default settings) on loopback;
    ``--clients`` client threads send the requests as fast as they are
    acknowledged, request *i* to receiver *i mod N*. Each client thread has its own
    connection to each receiver (a gRPC channel of its own, an HTTP keep-alive).
gRPC wN / HTTP wN (``--workers N``)
    one ``tokentrace serve --workers N``: N worker processes on the same two ports,
    the kernel spreading the client threads' connections over them.
gRPC before … (``--baseline-src DIR``)
    the same, with receivers run from another copy of ``src/`` (say, the last
    commit's: ``git archive HEAD src | tar -x -C DIR``), in the same rounds, on a database
    of their own (``tokentrace_before``, same server) migrated by that copy's migrations,
    so its SQL (the rollup trigger) is the one measured too. ``--baseline-src NAME=DIR``,
    repeated, measures several baselines in the same rounds (phases ``gRPC NAME ×1``,
    databases ``tokentrace_NAME``). A receiver answers only after
    the COPY is committed, so spans/s = spans ÷ (last answer − first send). Every
    answer is checked to be a full success, and the stored rows are counted. A
    receiver commits the requests in progress together (group commit); the spans
    per COPY + commit over the run are read from each receiver's shutdown log line.

Phoenix gRPC / Phoenix HTTP (``--phoenix``)
    Arize Phoenix (``arize-phoenix[pg]``, version pinned in ``PHOENIX_VERSION``),
    installed in a venv of its own (``--phoenix-venv``, created if missing) and run
    as ``phoenix serve`` on a database of its own (``phoenix_bench``) on the same
    PostgreSQL server, after tokentrace's rounds. The first ``--phoenix-requests``
    of the same requests (Phoenix is slow), from ``--clients`` threads, to its
    OTLP/gRPC port and to ``POST /v1/traces`` on its web port; refusals for
    backpressure (HTTP 503, gRPC UNAVAILABLE) are retried and counted. Phoenix
    answers before it writes, so spans/s = spans ÷ (the poll of its ``spans`` table,
    every 50 ms, that saw them all − first send).

For each phase the CPU seconds used by the receivers, the PostgreSQL processes and
this client process are read, per span, to show which one is the bottleneck. A
final in-process profile splits the receiver's own work into decode, build rows
(normalize + derive + sanitize) and write (COPY + commit).

Usage::

    python bench/bench_receiver.py                 # 5 rounds of 40 × 512 spans
    python bench/bench_receiver.py --quick         # a smoke run
    python bench/bench_receiver.py --clients 8     # more requests in flight
    python bench/bench_receiver.py --dsn postgresql://...   # an existing server (emptied!)
    python bench/bench_receiver.py --clients 8 --requests 80 --runs 3 --receivers 1 \
        --phoenix                                 # and Arize Phoenix, 8 requests a phase
    python bench/bench_receiver.py --clients 8 --requests 80 --receivers 1,2 --workers 2 \
        --baseline-src /tmp/before/src            # the run recorded in bench/RESULTS.md
    python bench/bench_receiver.py --clients 8 --requests 80 --runs 5 --receivers 1 \
        --baseline-src before18=/tmp/before18/src --baseline-src main=/tmp/main/src

Without ``--dsn`` a fresh embedded PostgreSQL runs in a temporary directory.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import grpc
import psutil
import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tokentrace.receiver.decode import decode_protobuf
from tokentrace.receiver.grpc_server import FULL_METHOD
from tokentrace.receiver.ingest import build_rows
from tokentrace.store.embedded import embedded_dsn, stop_embedded
from tokentrace.store.migrate import migrate
from tokentrace.store.rows import COLUMNS, DEFAULT_MAX_VALUE_CHARS
from tokentrace.store.writer import SpanWriter

SERVE = (
    "import argparse, sys; from tokentrace.receiver import cli; p = argparse.ArgumentParser(); "
    "cli.add_arguments(p); sys.exit(cli.run(p.parse_args(sys.argv[1:])))"
)
MODELS = ("llama3.2", "qwen2.5:7b", "mistral-7b-instruct", "phi3:mini", "gemma2:9b")


# --- workload ---------------------------------------------------------------------
def _kv(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def make_request(spans: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    now = time.time_ns()
    items = []
    for _ in range(spans):
        model = rnd.choice(MODELS)
        start = now - rnd.randrange(60 * 10**9, 3_600 * 10**9)
        items.append(
            Span(
                trace_id=rnd.randbytes(16),
                span_id=rnd.randbytes(8),
                parent_span_id=rnd.randbytes(8),
                name=f"chat {model}",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start,
                end_time_unix_nano=start + rnd.randrange(10**8, 2 * 10**10),
                attributes=[
                    _kv("gen_ai.operation.name", string_value="chat"),
                    _kv("gen_ai.provider.name", string_value="ollama"),
                    _kv("gen_ai.request.model", string_value=model),
                    _kv("gen_ai.response.model", string_value=model),
                    _kv("gen_ai.usage.input_tokens", int_value=rnd.randrange(10, 4000)),
                    _kv("gen_ai.usage.output_tokens", int_value=rnd.randrange(1, 1000)),
                    _kv("gen_ai.request.max_tokens", int_value=1024),
                    _kv("gen_ai.request.temperature", double_value=0.7),
                    _kv("gen_ai.request.stream", bool_value=True),
                    _kv("gen_ai.response.time_to_first_chunk", double_value=rnd.random()),
                    _kv("server.address", string_value="127.0.0.1"),
                    _kv("server.port", int_value=11434),
                ],
            )
        )
    resource = Resource(
        attributes=[
            _kv("service.name", string_value="chat-api"),
            _kv("service.version", string_value="1.4.2"),
            _kv("telemetry.sdk.language", string_value="python"),
            _kv("telemetry.sdk.name", string_value="opentelemetry"),
            _kv("telemetry.sdk.version", string_value="1.45.2"),
        ]
    )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=resource,
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="bench"), spans=items)],
            )
        ]
    )
    body: bytes = request.SerializeToString()
    return body


# --- database helpers -------------------------------------------------------------
def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE tokentrace.spans")
        # The link rows of the spans just removed (migration 0100 on): else the next
        # phase's same span ids would meet this phase's rows.
        conn.execute(
            "DO $$ BEGIN IF to_regclass('tokentrace.call_links') IS NOT NULL THEN"
            " TRUNCATE tokentrace.call_links; END IF; END $$"
        )
        conn.execute("CHECKPOINT")


def baseline_database(dsn: str, src: str, name: str = "before") -> str:
    """A database of its own for the "before" receivers, migrated by *their* migrations
    (a receiver's SQL, the rollup trigger above all, is part of what is measured)."""
    db = f"tokentrace_{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    url = make_conninfo(dsn, dbname=db)
    subprocess.run(
        [sys.executable, "-c", "import sys; from tokentrace.store.migrate import migrate; "
         "migrate(sys.argv[1])", url],
        env=dict(os.environ, PYTHONPATH=src),
        check=True,
    )  # fmt: skip
    return url


def stored(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tokentrace.spans").fetchone()
    return int(row[0]) if row else 0


def copy_payloads(dsn: str, requests: Sequence[bytes]) -> list[bytes]:
    """PostgreSQL's binary COPY payload of each request's rows (stored once, read back)."""
    writer = SpanWriter(dsn, max_connections=1)
    payloads = []
    columns = ", ".join(COLUMNS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for body in requests:
            conn.execute("TRUNCATE tokentrace.spans")
            writer.write_wire(build_rows(decode_protobuf(body).spans, DEFAULT_MAX_VALUE_CHARS)[0])
            with (
                conn.cursor() as cur,
                cur.copy(
                    f"COPY (SELECT {columns} FROM tokentrace.spans) TO STDOUT (FORMAT BINARY)"
                ) as copy,
            ):
                payloads.append(b"".join(bytes(chunk) for chunk in copy))
    writer.close()
    return payloads


def postmaster_of(dsn: str) -> psutil.Process | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        return psutil.Process(int(row[0]) if row else 0).parent()
    except psutil.Error:
        return None


def postgres_cpu(postmaster: psutil.Process | None) -> float:
    """CPU seconds of PostgreSQL so far: the postmaster, its live backends, and (through
    the postmaster's children times) every backend that has exited."""
    if postmaster is None:
        return 0.0
    try:
        own = postmaster.cpu_times()
        total: float = own.user + own.system + own.children_user + own.children_system
        children = postmaster.children()
    except psutil.Error:
        return 0.0
    return total + sum(cpu_seconds(children).values())


def cpu_seconds(processes: Sequence[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in processes:
        try:
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
        except psutil.Error:
            pass
    return out


# --- receivers and clients --------------------------------------------------------
class ServeProcess:
    """One ``tokentrace serve`` on loopback, ports chosen by the kernel."""

    def __init__(
        self, dsn: str, log: Path, *, workers: int = 1, src: str | None = None
    ) -> None:
        env = dict(os.environ, TOKENTRACE_DSN=dsn)
        env.pop("TOKENTRACE_AUTH_TOKEN", None)
        if src is not None:  # another copy of the package (the "before" receiver)
            env["PYTHONPATH"] = src
        self.log = log
        self.workers = workers
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SERVE,
                    "--grpc-endpoint",
                    "127.0.0.1:0",
                    "--http-endpoint",
                    "127.0.0.1:0",
                    *(["--workers", str(workers)] if workers > 1 else []),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.ps = psutil.Process(self.proc.pid)
        self.grpc_port, self.http_port = self._ports()
        if workers > 1:
            self._wait_workers()

    def _wait_workers(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ps.children()) < self.workers and time.monotonic() < deadline:
            time.sleep(0.05)

    def processes(self) -> list[psutil.Process]:
        """The receiver and, with ``--workers``, its worker processes (CPU is read from all)."""
        return [self.ps, *self.ps.children()]

    def _ports(self, timeout: float = 60) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            grpc_port = re.search(r"OTLP/gRPC listening on [\d.]+:(\d+)", text)
            http_port = re.search(r"OTLP/HTTP and reports listening on http://[\d.]+:(\d+)", text)
            if grpc_port and http_port:
                return int(grpc_port.group(1)), int(http_port.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"tokentrace serve did not start:\n{self.log.read_text()}")

    def stop(self) -> tuple[int, int] | None:
        """Stop (drained); the spans stored and the writes (group commits) they took."""
        self.proc.terminate()
        self.proc.wait(timeout=60)
        log = self.log.read_text()
        # One line per process: with --workers, one per worker.
        found = re.findall(r"(\d+) spans stored, \d+ rejected since start; (\d+) writes", log)
        if not found:
            return None
        return sum(int(f[0]) for f in found), sum(int(f[1]) for f in found)


def _check(response: bytes) -> None:
    parsed = ExportTraceServiceResponse.FromString(response)
    if parsed.partial_success.rejected_spans:
        raise RuntimeError(f"spans rejected: {parsed.partial_success.error_message}")


def grpc_client(ports: Sequence[int]) -> Callable[[int, bytes], None]:
    """Each client thread has its own channel per port, on a connection of its own (as
    separate exporters would): ``serve --workers`` spreads connections, not requests."""
    local = threading.local()

    def send(index: int, body: bytes) -> None:
        calls = getattr(local, "calls", None)
        if calls is None:
            options = [("grpc.use_local_subchannel_pool", 1)]
            calls = local.calls = [
                grpc.insecure_channel(f"127.0.0.1:{port}", options=options).unary_unary(
                    FULL_METHOD, _registered_method=True
                )
                for port in ports
            ]
        _check(calls[index % len(calls)](body, timeout=120))

    return send


class HTTPStatusError(RuntimeError):
    """A non-200 answer to ``POST /v1/traces`` (its status, for the Phoenix retries)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


def http_client(ports: Sequence[int]) -> Callable[[int, bytes], None]:
    local = threading.local()

    def send(index: int, body: bytes) -> None:
        port = ports[index % len(ports)]
        conns = getattr(local, "conns", None)
        if conns is None:
            conns = local.conns = {
                p: http.client.HTTPConnection("127.0.0.1", p, timeout=120) for p in ports
            }
        conns[port].request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        response = conns[port].getresponse()
        data = response.read()
        if response.status != 200:
            raise HTTPStatusError(response.status, data)
        _check(data)

    return send


def drive(send: Callable[[int, bytes], None], requests: Sequence[bytes], clients: int) -> float:
    """Send every request from ``clients`` threads; seconds from first send to last answer."""
    next_index = iter(range(len(requests)))
    lock = threading.Lock()
    errors: list[Exception] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            try:
                send(i, requests[i])
            except Exception as exc:  # noqa: BLE001 - reported after the phase
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]!r}")
    return elapsed


# --- phases -----------------------------------------------------------------------
class Bench:
    def __init__(self, dsn: str, requests: list[bytes], clients: int, workdir: Path) -> None:
        self.dsn, self.requests, self.clients, self.workdir = dsn, requests, clients, workdir
        self.spans = sum(len(decode_protobuf(b).spans) for b in requests)
        self.rows = [
            build_rows(decode_protobuf(b).spans, DEFAULT_MAX_VALUE_CHARS)[0] for b in requests
        ]
        self.payloads = copy_payloads(dsn, requests)
        # Connections stay open across phases, as a receiver's do: their CPU time is
        # read while they live (a backend that just exited may not be counted yet).
        self.copy_conns = [psycopg.connect(dsn) for _ in range(clients)]
        self.writer = SpanWriter(dsn, max_connections=clients)
        self.postmaster = postmaster_of(dsn)
        self.me = psutil.Process()

    def measure(
        self, run: Callable[[], float], receivers: Sequence[ServeProcess] = (), dsn: str = ""
    ) -> dict[str, float]:
        dsn = dsn or self.dsn
        reset(dsn)
        pg_before, me_before = postgres_cpu(self.postmaster), cpu_seconds([self.me])
        procs = [p for r in receivers for p in r.processes()]
        rx_before = cpu_seconds(procs)
        seconds = run()
        pg_after, me_after = postgres_cpu(self.postmaster), cpu_seconds([self.me])
        rx_after = cpu_seconds(procs)
        count = stored(dsn)
        if count != self.spans:
            raise RuntimeError(f"stored {count} rows, expected {self.spans}")

        def per_span_us(before: dict[int, float], after: dict[int, float]) -> float:
            return sum(after[p] - before.get(p, 0.0) for p in after) / self.spans * 1e6

        return {
            "rate": self.spans / seconds,
            "rx_us": per_span_us(rx_before, rx_after),
            "pg_us": (pg_after - pg_before) / self.spans * 1e6,
            "client_us": per_span_us(me_before, me_after),
        }

    def raw_copy(self) -> float:
        statement = f"COPY tokentrace.spans ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

        def send(index: int, _: bytes) -> None:
            conn = self.copy_conns[index % len(self.copy_conns)]
            with conn.cursor() as cur, cur.copy(statement) as copy:
                copy.write(self.payloads[index])
            conn.commit()

        # Each connection is used by one thread at a time: thread i owns index ≡ i.
        return drive_owned(send, len(self.payloads), len(self.copy_conns))

    def sender(self, send: Callable[[int, bytes], None]) -> Callable[[], float]:
        """A phase that sends every request through ``send``."""
        return lambda: drive(send, self.requests, self.clients)

    def span_writer(self) -> float:
        return drive(
            lambda i, _: _ignore(self.writer.write_wire(self.rows[i])), self.requests, self.clients
        )

    def close(self) -> None:
        for conn in self.copy_conns:
            conn.close()
        self.writer.close()


def _ignore(_: object) -> None:
    pass


def drive_owned(send: Callable[[int, bytes], None], count: int, workers: int) -> float:
    """Like :func:`drive`, but worker ``w`` sends exactly the indexes ``w, w+workers, …``."""
    errors: list[Exception] = []

    def worker(w: int) -> None:
        try:
            for i in range(w, count, workers):
                send(i, b"")
        except Exception as exc:  # noqa: BLE001 - reported after the phase
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"raw COPY failed: {errors[0]!r}")
    return time.perf_counter() - began


def profile(dsn: str, requests: Sequence[bytes]) -> dict[str, float]:
    """The receiver's own work per span, in one thread: decode, build rows, write.

    CPU time of this thread (``time.thread_time``), so other load on the machine
    does not inflate it; "write" is the Python side of COPY (PostgreSQL's own CPU is
    in the phase table).
    """
    reset(dsn)
    writer = SpanWriter(dsn, max_connections=1)
    cpu = {"decode": 0.0, "build_row": 0.0, "write": 0.0}
    spans = 0
    for body in requests:
        t0 = time.thread_time()
        decoded = decode_protobuf(body)
        t1 = time.thread_time()
        rows = build_rows(decoded.spans, DEFAULT_MAX_VALUE_CHARS)[0]
        t2 = time.thread_time()
        writer.write_wire(rows)
        t3 = time.thread_time()
        cpu["decode"] += t1 - t0
        cpu["build_row"] += t2 - t1
        cpu["write"] += t3 - t2
        spans += len(rows)
    writer.close()
    return {stage: seconds / spans * 1e6 for stage, seconds in cpu.items()}


def print_profile(dsn: str, requests: Sequence[bytes]) -> None:
    """The 20 functions the receiver pipeline spends most of its own time in."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    profile(dsn, requests)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


# --- Arize Phoenix (--phoenix) -----------------------------------------------------
PHOENIX_VERSION = "20.26.1"  # arize-phoenix: the current release on 2026-12-03
PHOENIX_DATABASE = "phoenix_bench"
PHOENIX_VENV = Path.home() / ".cache" / "tokentrace-bench" / "phoenix-venv"


def phoenix_command(venv: Path) -> Path:
    """``phoenix`` in ``venv``; the venv is created and given the pinned
    ``arize-phoenix[pg]`` (asyncpg, its PostgreSQL driver) when either is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = "import importlib.metadata as m, asyncpg; print(m.version('arize-phoenix'))"
    found = subprocess.run([str(python), "-c", probe], check=False, capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.strip() != PHOENIX_VERSION:
        print(f"installing arize-phoenix[pg]=={PHOENIX_VERSION} into {venv}", flush=True)
        requirement = f"arize-phoenix[pg]=={PHOENIX_VERSION}"
        pip = [str(python), "-m", "pip", "install", "--quiet", requirement]
        subprocess.run(pip, check=True)
    return venv / "bin" / "phoenix"


def phoenix_database(dsn: str) -> tuple[str, str]:
    """Phoenix's own database on the benchmark's server, created if missing: a DSN for
    counting its spans, and the same database as Phoenix's ``PHOENIX_SQL_DATABASE_URL``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (PHOENIX_DATABASE,)
        ).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PHOENIX_DATABASE)))
    params = conninfo_to_dict(dsn)
    host, port = str(params.get("host") or ""), str(params.get("port") or "")
    user = quote(str(params.get("user") or ""), safe="")
    password = quote(str(params.get("password") or ""), safe="")
    netloc = f"{user}{':' + password if password else ''}@" if user else ""
    query: dict[str, str] = {}
    if host.startswith("/"):  # a Unix socket directory (the embedded server): asyncpg takes it
        query = {"host": host, **({"port": port} if port else {})}
    else:
        netloc += f"{host}{':' + port if port else ''}"
    url = f"postgresql://{netloc}/{PHOENIX_DATABASE}" + (f"?{urlencode(query)}" if query else "")
    return make_conninfo(dsn, dbname=PHOENIX_DATABASE), url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PhoenixProcess:
    """``phoenix serve`` in a child process, on its own database and two free ports."""

    def __init__(
        self, command: Path, database_url: str, workdir: Path, *, timeout: float = 300
    ) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.config = {
            "PHOENIX_SQL_DATABASE_URL": database_url,
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.http_port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_WORKING_DIR": str(workdir),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))}
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "phoenix.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [str(command), "serve"],
                env={**env, **self.config},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.ps = psutil.Process(self.proc.pid)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Until ``GET /healthz`` answers 200 and the gRPC port accepts a channel."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
                conn.request("GET", "/healthz")
                healthy = conn.getresponse().status == 200
                conn.close()
            except OSError:
                healthy = False
            if healthy:
                with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
                    grpc.channel_ready_future(channel).result(
                        timeout=max(deadline - time.monotonic(), 1)
                    )
                return
            time.sleep(0.5)
        raise RuntimeError(f"phoenix serve did not start:\n{self.log.read_text()[-4000:]}")

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self) -> bool:
        """SIGTERM (Phoenix drains its queue), then SIGKILL after a minute; whether it
        shut down cleanly (uvicorn re-raises the SIGTERM after its shutdown)."""
        leftovers = self.processes()[1:]
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in leftovers:
            try:
                child.kill()
            except psutil.Error:
                pass
        code = self.proc.returncode
        shut_down = "Application shutdown complete" in self.log.read_text()
        return code == 0 or (code == -signal.SIGTERM and shut_down)


class Retrying:
    """Sends through ``send`` and retries what Phoenix refuses as backpressure (HTTP 503,
    gRPC UNAVAILABLE: its span queue is full) after a doubling pause, as the OTLP
    exporters do; counts the refusals."""

    def __init__(self, send: Callable[[int, bytes], None], give_up_after: float = 600) -> None:
        self.send, self.give_up_after = send, give_up_after
        self.refused = 0
        self._lock = threading.Lock()

    def __call__(self, index: int, body: bytes) -> None:
        delay, deadline = 0.05, time.monotonic() + self.give_up_after
        while True:
            try:
                self.send(index, body)
                return
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
            except HTTPStatusError as exc:
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
            with self._lock:
                self.refused += 1
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def phoenix_spans(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM spans").fetchone()
    return int(row[0]) if row else 0


def measure_phoenix(
    bench: Bench,
    phoenix: PhoenixProcess,
    phoenix_dsn: str,
    send: Retrying,
    requests: Sequence[bytes],
    timeout: float,
) -> dict[str, float]:
    """Send ``requests`` to Phoenix and poll its ``spans`` table until every span is
    there (or ``timeout``): spans persisted per second from first send to the poll
    that saw the last one. Phoenix answers before it writes (it queues the spans)."""
    expected = sum(len(decode_protobuf(b).spans) for b in requests)
    with psycopg.connect(phoenix_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE traces CASCADE")  # spans and their costs go with the traces
        conn.execute("CHECKPOINT")
        refused_before = send.refused
        pg_before, me_before = postgres_cpu(bench.postmaster), cpu_seconds([bench.me])
        procs = phoenix.processes()
        px_before = cpu_seconds(procs)
        acked: list[float] = []
        errors: list[Exception] = []

        def client() -> None:
            try:
                acked.append(drive(send, requests, bench.clients))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=client)
        began = time.perf_counter()
        thread.start()
        count = 0
        while True:
            time.sleep(0.05)
            count = phoenix_spans(conn)
            elapsed = time.perf_counter() - began
            if count >= expected or elapsed > timeout or (errors and not thread.is_alive()):
                break
        pg_after, me_after = postgres_cpu(bench.postmaster), cpu_seconds([bench.me])
        px_after = cpu_seconds(procs)
        thread.join()
    if errors:
        raise RuntimeError(f"Phoenix refused the spans: {errors[0]!r}")
    spans = max(count, 1)

    def per_span_us(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(after[p] - before.get(p, 0.0) for p in after) / spans * 1e6

    return {
        "rate": count / elapsed,
        "rx_us": per_span_us(px_before, px_after),
        "pg_us": (pg_after - pg_before) / spans * 1e6,
        "client_us": per_span_us(me_before, me_after),
        "sent": expected,
        "stored": count,
        "ack_rate": expected / acked[0] if acked else 0.0,
        "refused": send.refused - refused_before,
    }


def run_phoenix(
    bench: Bench, args: argparse.Namespace, requests: Sequence[bytes]
) -> dict[str, list[dict[str, float]]]:
    """Phoenix's phases (gRPC, HTTP), ``--phoenix-runs`` rounds, after tokentrace's."""
    command = phoenix_command(args.phoenix_venv)
    phoenix_dsn, url = phoenix_database(bench.dsn)
    started = time.perf_counter()
    phoenix = PhoenixProcess(command, url, bench.workdir / "phoenix")
    results: dict[str, list[dict[str, float]]] = {}
    try:
        shown = {**phoenix.config, "PHOENIX_SQL_DATABASE_URL": _redacted(url)}
        print(
            f"Phoenix {PHOENIX_VERSION} ready in {time.perf_counter() - started:.0f} s: "
            + " ".join(f"{k}={v}" for k, v in shown.items()),
            flush=True,
        )
        phases = [
            ("Phoenix gRPC", Retrying(grpc_client([phoenix.grpc_port]))),
            ("Phoenix HTTP", Retrying(http_client([phoenix.http_port]))),
        ]
        for run in range(args.phoenix_runs):
            for name, send in phases:
                measured = measure_phoenix(
                    bench, phoenix, phoenix_dsn, send, requests, args.phoenix_timeout
                )
                results.setdefault(name, []).append(measured)
            print(
                f"Phoenix run {run + 1}: "
                + ", ".join(
                    f"{k} {v[-1]['rate']:,.0f}/s ({v[-1]['stored']:,.0f} of {v[-1]['sent']:,.0f} "
                    f"spans persisted, {v[-1]['refused']:.0f} refusals)"
                    for k, v in results.items()
                ),
                flush=True,
            )
    finally:
        if not phoenix.stop():
            log = phoenix.log.read_text()[-2000:]
            print(f"phoenix serve did not shut down cleanly ({phoenix.proc.returncode}):\n{log}")
    return results


def _redacted(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@]+@", r"\1***@", url)


def print_phoenix(
    results: dict[str, list[dict[str, float]]],
    phoenix: dict[str, list[dict[str, float]]],
    spans: int,
) -> None:
    """Phoenix against tokentrace's first receiver setup, protocol by protocol."""
    sent = next(iter(phoenix.values()))[0]["sent"]
    print(
        f"\nPhoenix {PHOENIX_VERSION} rows: {sent:,.0f} spans per phase (tokentrace's: {spans:,}); "
        "spans/s = spans in its `spans` table ÷ (the 50 ms poll that saw them all − first "
        "send); 'receiver µs/span' is the CPU of Phoenix's process tree"
    )
    for name, runs in phoenix.items():
        protocol = name.split()[-1]
        own = next((k for k in results if k.startswith(f"{protocol} ")), None)
        rate = statistics.median(r["rate"] for r in runs)
        line = (
            f"{name}: {rate:,.0f} spans/s persisted (median of {len(runs)}); "
            f"persisted {min(r['stored'] for r in runs):,.0f}–{max(r['stored'] for r in runs):,.0f} "
            f"of {runs[0]['sent']:,.0f} sent; answered at "
            f"{statistics.median(r['ack_rate'] for r in runs):,.0f} spans/s; "
            f"{sum(r['refused'] for r in runs):.0f} requests refused (retried)"
        )
        if own is not None:
            theirs = statistics.median(r["rate"] for r in results[own])
            line += f"; tokentrace {own} {theirs:,.0f} spans/s = {theirs / rate:,.0f}× Phoenix"
        print(line)


# --- main -------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing PostgreSQL (its tokentrace.spans is emptied!)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=40, help="requests per phase")
    parser.add_argument("--spans", type=int, default=512, help="spans per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument(
        "--receivers", default="1,2", help="counts of separate receiver processes to measure"
    )
    parser.add_argument(
        "--workers", default="", help="`serve --workers N` counts to measure, e.g. 2"
    )
    parser.add_argument(
        "--baseline-src",
        metavar="[NAME=]DIR",
        action="append",
        default=[],
        help="also measure receivers run from this copy of src/ (PYTHONPATH), as 'before' "
        "(or NAME); repeat for several baselines, each on a database of its own",
    )
    parser.add_argument("--quick", action="store_true", help="2 runs of 10 requests")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of the pipeline"
    )
    parser.add_argument(
        "--phoenix",
        action="store_true",
        help=f"also measure Arize Phoenix {PHOENIX_VERSION} (own venv, own database, same server)",
    )
    parser.add_argument(
        "--phoenix-venv",
        type=Path,
        default=PHOENIX_VENV,
        metavar="DIR",
        help="the venv for Phoenix, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--phoenix-requests",
        type=int,
        default=8,
        help="requests per Phoenix phase (it is slow; default %(default)s)",
    )
    parser.add_argument(
        "--phoenix-runs", type=int, help="rounds of Phoenix phases (default: --runs)"
    )
    parser.add_argument(
        "--phoenix-timeout",
        type=float,
        default=600,
        help="seconds to wait for a Phoenix phase's spans to be persisted (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.requests = 2, 10
    if args.phoenix_runs is None:
        args.phoenix_runs = args.runs

    with tempfile.TemporaryDirectory(prefix="tt-bench-rx-") as tmp:
        workdir = Path(tmp)
        dsn = args.dsn or embedded_dsn(workdir / "pg")
        try:
            migrate(dsn)
            requests = [make_request(args.spans, seed) for seed in range(args.requests)]
            bench = Bench(dsn, requests, args.clients, workdir)
            print(
                f"{bench.spans:,} spans per phase: {args.requests} requests × {args.spans} spans "
                f"({len(requests[0]) / 1024:.0f} KiB each), {args.clients} clients, {args.runs} runs",
                flush=True,
            )
            phoenix: dict[str, list[dict[str, float]]] = {}
            try:
                baselines = [
                    (name, src, baseline_database(dsn, src, name))
                    for name, src in map(_named_src, args.baseline_src)
                ]
                results = run_rounds(bench, setups(args, baselines), args.runs)
                if args.phoenix:
                    phoenix = run_phoenix(bench, args, phoenix_requests(args, requests))
            finally:
                bench.close()
            print_table({**results, **phoenix}, profile(dsn, requests))
            if phoenix:
                print_phoenix(results, phoenix, bench.spans)
            if args.profile:
                print_profile(dsn, requests)
        finally:
            if not args.dsn:
                stop_embedded()  # before its data directory is removed
    return 0


def phoenix_requests(args: argparse.Namespace, requests: Sequence[bytes]) -> list[bytes]:
    """The first ``--phoenix-requests`` of the same requests (more made if needed)."""
    extra = range(len(requests), args.phoenix_requests)
    return [*requests[: args.phoenix_requests], *(make_request(args.spans, s) for s in extra)]


@dataclass(frozen=True)
class Setup:
    """One receiver configuration measured in every round (gRPC and HTTP)."""

    label: str  # "×1", "×2", "w2", "before ×1", …
    processes: int = 1  # separate `tokentrace serve` processes, request i to i mod n
    workers: int = 1  # `tokentrace serve --workers N` (one process group)
    src: str | None = None  # PYTHONPATH of another copy of the package
    dsn: str | None = None  # a database of its own (the baseline's schema), else the bench's


def _named_src(arg: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` (named "before")."""
    name, sep, src = arg.partition("=")
    return (name, src) if sep and name.isidentifier() else ("before", arg)


def setups(
    args: argparse.Namespace, baselines: Sequence[tuple[str, str, str]] = ()
) -> list[Setup]:
    """``baselines``: (name, src, dsn) of each baseline, measured before the candidate."""
    out = [Setup(f"×{n}", processes=n) for n in _counts(args.receivers)]
    out += [Setup(f"w{n}", workers=n) for n in _counts(args.workers)]
    before = [
        Setup(f"{name} {s.label}", s.processes, s.workers, src, dsn)
        for name, src, dsn in baselines
        for s in out
        if s.workers == 1  # the baseline may predate --workers
    ]
    return before + out


def _counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def run_rounds(
    bench: Bench, configs: Sequence[Setup], runs: int
) -> dict[str, list[dict[str, float]]]:
    """Every phase once per round; the receivers stay up (warm) across rounds."""
    servers = {
        setup.label: [
            ServeProcess(
                setup.dsn or bench.dsn,
                bench.workdir / f"serve-{i}-{i_proc}.log",
                workers=setup.workers,
                src=setup.src,
            )
            for i_proc in range(setup.processes)
        ]
        for i, setup in enumerate(configs)
    }
    dsns = {setup.label: setup.dsn or bench.dsn for setup in configs}
    results: dict[str, list[dict[str, float]]] = {}
    try:
        for run in range(runs):
            phases: list[tuple[str, Callable[[], float], Sequence[ServeProcess], str]] = [
                ("raw COPY", bench.raw_copy, (), bench.dsn),
                ("SpanWriter", bench.span_writer, (), bench.dsn),
            ]
            for label, group in servers.items():
                phases.append(
                    (
                        f"gRPC {label}",
                        bench.sender(grpc_client([s.grpc_port for s in group])),
                        group,
                        dsns[label],
                    )
                )
                phases.append(
                    (
                        f"HTTP {label}",
                        bench.sender(http_client([s.http_port for s in group])),
                        group,
                        dsns[label],
                    )
                )
            for name, run_phase, receivers, dsn in phases:
                results.setdefault(name, []).append(bench.measure(run_phase, receivers, dsn))
            print(
                f"run {run + 1}: "
                + ", ".join(f"{k} {v[-1]['rate']:,.0f}/s" for k, v in results.items()),
                flush=True,
            )
    finally:
        for label, group in servers.items():
            report_writes(label, [server.stop() for server in group])
    return results


def report_writes(label: str, stops: Sequence[tuple[int, int] | None]) -> None:
    """How many spans each group commit carried, over the whole run (gRPC and HTTP)."""
    if not stops or None in stops:
        return
    spans = sum(s[0] for s in stops if s)
    writes = sum(s[1] for s in stops if s)
    print(
        f"receivers {label}: {spans:,} spans in {writes:,} writes = "
        f"{spans / max(writes, 1):,.0f} spans per COPY + commit",
        flush=True,
    )


def _percent(ratio: float) -> str:
    return f"{ratio:.0%}" if ratio >= 0.01 else f"{ratio:.2%}"


def print_table(results: dict[str, list[dict[str, float]]], split: dict[str, float]) -> None:
    baseline = statistics.median(r["rate"] for r in results["raw COPY"])
    print()
    print(
        f"{'phase':<18} {'spans/s (median)':>17} {'min':>9} {'max':>9} {'vs raw COPY':>12} "
        f"{'receiver µs/span':>17} {'PostgreSQL µs/span':>19} {'client µs/span':>15}"
    )
    for name, runs in results.items():
        rates = [r["rate"] for r in runs]
        median = statistics.median(rates)
        print(
            f"{name:<18} {median:>17,.0f} {min(rates):>9,.0f} {max(rates):>9,.0f} "
            f"{_percent(median / baseline):>12} "
            f"{statistics.median(r['rx_us'] for r in runs):>17.1f} "
            f"{statistics.median(r['pg_us'] for r in runs):>19.1f} "
            f"{statistics.median(r['client_us'] for r in runs):>15.1f}"
        )
    total = sum(split.values())
    print(
        f"\nreceiver CPU per span, one thread, in process: decode {split['decode']:.1f} µs, "
        f"build_row {split['build_row']:.1f} µs, write (Python side of COPY) {split['write']:.1f} µs "
        f"= {total:.1f} µs, i.e. at most {1e6 / total:,.0f} spans/s per receiver process (one core)"
    )


if __name__ == "__main__":
    sys.exit(main())
