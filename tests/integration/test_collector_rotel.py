"""A real OpenTelemetry collector in front of ``tokentrace serve``.

There is no Docker engine to run the Collector images here, but the ``rotel``
package ships a real OTLP collector binary (``rotel-agent``). The tests start it
with an OTLP receiver and its OTLP/gRPC exporter pointed at a ``tokentrace serve``
process, sends spans from the official OpenTelemetry OTLP exporter to the
collector, and checks in PostgreSQL that every span arrived exactly once:

* one collector, one receiver (with the receiver's bearer token, which the
  collector must forward);
* spans accepted by the collector while the receiver is down arrive once it is up
  (the collector's retry, as the gateway config relies on);
* two receivers writing to one fresh database, each span sent through both: the
  schema is migrated once, each span is stored once and the rollups are exact;
* (without a collector) two receivers whose first requests all need the same new
  day partitions at the same instant: no request may be refused;
* two receivers storing the same spans in opposite orders at once: no deadlock.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from psycopg.conninfo import make_conninfo

from tests.helpers import query

pytestmark = pytest.mark.slow

MODELS = ("llama3.1:8b", "qwen2.5:7b-instruct", "gpt-4o-mini")
STARTUP_TIMEOUT_S = 60.0
ARRIVAL_TIMEOUT_S = 60.0
# rotel ships wheels for CPython 3.11 on Linux x86_64 (glibc >= 2.34) and macOS only
# (pyproject.toml's test extra installs it there and nowhere else).
_ROTEL_PLATFORMS = "CPython 3.11 on Linux x86_64 or macOS"


def _rotel_supported_here() -> bool:
    machine_ok = sys.platform == "darwin" or (
        sys.platform == "linux" and platform.machine() == "x86_64"
    )
    return sys.version_info[:2] == (3, 11) and machine_ok


@pytest.fixture(scope="module")
def rotel_agent() -> Path:
    """The ``rotel-agent`` binary of the installed ``rotel`` package, checked to run."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        if _rotel_supported_here():
            pytest.fail("rotel is not installed: pip install -e '.[test]'")
        pytest.skip(
            f"rotel (the collector binary) has no wheel for Python {platform.python_version()} "
            f"on {sys.platform}/{platform.machine()}; it runs on {_ROTEL_PLATFORMS}"
        )
    agent = Path(next(iter(spec.submodule_search_locations))) / "rotel-agent"
    assert agent.is_file(), f"the rotel package has no {agent.name}"
    try:
        probe = subprocess.run(
            [str(agent), "version"], check=False, capture_output=True, text=True, timeout=30
        )
    except OSError as exc:  # e.g. exec format error on a foreign architecture
        pytest.skip(f"the rotel-agent binary cannot run on this platform: {exc}")
    if probe.returncode != 0:
        # The binary links libpython3.11 dynamically (for rotel's Python processors).
        pytest.skip(f"the rotel-agent binary cannot run here: {probe.stderr.strip()[:300]}")
    return agent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Child:
    """A child process whose output goes to a log file; stopped with SIGTERM."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], log: Path, http_port: int = 0
    ) -> None:
        self.name = name
        self.log = log
        self.http_port = http_port
        with log.open("wb") as out:
            self.proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            pytest.fail(f"{self.name} exited with status {code}:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextmanager
def _running(child: _Child) -> Iterator[_Child]:
    try:
        yield child
    finally:
        child.stop()


def _wait_until(
    condition: Callable[[], bool], child: _Child, what: str, timeout: float = STARTUP_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"{child.name}: {what} not within {timeout:.0f}s:\n{_tail(child.log)}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _serve(
    env: dict[str, str], dsn: str, token: str, grpc_port: int, tmp: Path, name: str
) -> _Child:
    """Start ``tokentrace serve`` on loopback (does not wait for it)."""
    http_port = _free_port()
    child_env = dict(env, TOKENTRACE_DSN=dsn, TOKENTRACE_AUTH_TOKEN=token)
    argv = [
        sys.executable, "-m", "tokentrace", "serve",
        "--grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--http-endpoint", f"127.0.0.1:{http_port}",
        "--grace", "5",
    ]  # fmt: skip
    return _Child(name, argv, child_env, tmp / f"{name}.log", http_port=http_port)


def _wait_healthy(child: _Child) -> None:
    url = f"http://127.0.0.1:{child.http_port}/healthz"
    _wait_until(lambda: _http_ok(url), child, "GET /healthz = 200")


def _rotel(
    agent: Path, target_grpc_port: int, token: str, tmp: Path, name: str
) -> tuple[_Child, int]:
    """Start rotel: OTLP in on free loopback ports, OTLP/gRPC out to ``target_grpc_port``."""
    grpc_port, http_port = _free_port(), _free_port()
    # Only our settings: a stray ROTEL_* variable in the environment must not change it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
    env["ROTEL_OTLP_EXPORTER_CUSTOM_HEADERS"] = f"authorization=Bearer {token}"  # not on argv
    argv = [
        str(agent), "start",
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--exporter", "otlp",
        "--otlp-exporter-endpoint", f"http://127.0.0.1:{target_grpc_port}",
        "--otlp-exporter-protocol", "grpc",
        "--otlp-exporter-retry-initial-backoff", "250ms",
        "--otlp-exporter-retry-max-backoff", "2s",
        "--batch-timeout", "100ms",
        "--pid-file", str(tmp / f"{name}.pid"),
        "--log-file", str(tmp / f"{name}.agent.log"),
    ]  # fmt: skip
    child = _Child(name, argv, env, tmp / f"{name}.log")
    return child, grpc_port


def _send_spans(
    collector_ports: Sequence[int], traces: int, children: int
) -> set[tuple[bytes, bytes]]:
    """GenAI-shaped traces from the official OTLP/gRPC exporter, to every collector given."""
    provider = TracerProvider(resource=Resource.create({"service.name": "rotel-e2e"}))
    for port in collector_ports:
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True)
        provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=256))
    tracer = provider.get_tracer("tests.rotel")
    sent: set[tuple[bytes, bytes]] = set()
    for i in range(traces):
        model = MODELS[i % len(MODELS)]
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "ollama",
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": 20 + i % 7,
            "gen_ai.usage.output_tokens": 100 + i % 11,
        }
        with tracer.start_as_current_span(f"chat {model}", attributes=attributes) as root:
            ctx = root.get_span_context()
            sent.add((ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big")))
            for j in range(children):
                with tracer.start_as_current_span(f"step {j}") as child:
                    c = child.get_span_context()
                    sent.add((c.trace_id.to_bytes(16, "big"), c.span_id.to_bytes(8, "big")))
    assert provider.force_flush(timeout_millis=30_000), "the collector did not accept every span"
    provider.shutdown()
    return sent


def _expected_output_tokens(traces: int) -> int:
    return sum(100 + i % 11 for i in range(traces))


def _wait_for_spans(dsn: str, expected: int, watch: Sequence[_Child]) -> None:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
    count = -1
    while time.monotonic() < deadline:
        for child in watch:
            child.check_alive()
        count = int(query(dsn, "SELECT count(*) FROM tokentrace.spans")[0][0])
        if count >= expected:
            break
        time.sleep(0.2)
    logs = "\n".join(f"--- {c.name}\n{_tail(c.log, 15)}" for c in watch)
    assert count == expected, (
        f"{count} of {expected} spans stored within {ARRIVAL_TIMEOUT_S:.0f}s\n{logs}"
    )


def _assert_each_span_once(dsn: str, sent: set[tuple[bytes, bytes]]) -> None:
    rows = query(dsn, "SELECT trace_id, span_id FROM tokentrace.spans")
    stored = [(bytes(t), bytes(s)) for t, s in rows]
    assert len(stored) == len(set(stored)) == len(sent)
    assert set(stored) == sent


def _assert_genai_figures(dsn: str, traces: int) -> None:
    """What the collector carried survived: resource, attributes, derived ms/token."""
    rows = query(
        dsn,
        "SELECT count(*), count(DISTINCT model), sum(output_tokens), "
        "count(*) FILTER (WHERE ms_per_token IS NOT NULL), min(service_name), max(service_name) "
        "FROM tokentrace.spans WHERE operation = 'chat'",
    )
    calls, models, output_tokens, with_score, service_min, service_max = rows[0]
    assert (calls, models) == (traces, len(MODELS))
    assert output_tokens == _expected_output_tokens(traces)
    assert with_score == traces
    assert service_min == service_max == "rotel-e2e"


def test_every_span_sent_through_rotel_is_stored_once(
    rotel_agent: Path, db: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(16)
    traces, children = 60, 9
    serve_port = _free_port()
    with ExitStack() as stack:
        serve = stack.enter_context(
            _running(_serve(subprocess_env, db, token, serve_port, tmp_path, "serve"))
        )
        _wait_healthy(serve)
        rotel, rotel_port = _rotel(rotel_agent, serve_port, token, tmp_path, "rotel")
        stack.enter_context(_running(rotel))
        _wait_until(lambda: _accepts_connections(rotel_port), rotel, "OTLP/gRPC port open")

        sent = _send_spans([rotel_port], traces, children)

        _wait_for_spans(db, len(sent), [serve, rotel])
    _assert_each_span_once(db, sent)
    _assert_genai_figures(db, traces)


def test_spans_accepted_while_tokentrace_is_down_arrive_when_it_is_up(
    rotel_agent: Path, db: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(16)
    traces, children = 30, 4
    serve_port = _free_port()  # nothing listens there yet
    with ExitStack() as stack:
        rotel, rotel_port = _rotel(rotel_agent, serve_port, token, tmp_path, "rotel")
        stack.enter_context(_running(rotel))
        _wait_until(lambda: _accepts_connections(rotel_port), rotel, "OTLP/gRPC port open")

        sent = _send_spans([rotel_port], traces, children)
        time.sleep(1.5)  # the collector is retrying against a closed port
        rotel.check_alive()
        assert query(db, "SELECT count(*) FROM tokentrace.spans")[0][0] == 0

        serve = stack.enter_context(
            _running(_serve(subprocess_env, db, token, serve_port, tmp_path, "serve"))
        )
        _wait_for_spans(db, len(sent), [serve, rotel])
    _assert_each_span_once(db, sent)
    _assert_genai_figures(db, traces)


@pytest.fixture
def fresh_dsn(dsn: str) -> Iterator[str]:
    """A new, empty database on the test server (no schema yet)."""
    name = f"tokentrace_scaleout_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test database's user may not CREATE DATABASE")
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_receivers_one_fresh_database_each_span_once(
    rotel_agent: Path, fresh_dsn: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """Two serve processes start together on an empty database; every span goes through both."""
    token = secrets.token_urlsafe(16)
    traces, children = 60, 9
    ports = [_free_port(), _free_port()]
    with ExitStack() as stack:
        receivers = [
            stack.enter_context(
                _running(_serve(subprocess_env, fresh_dsn, token, port, tmp_path, f"serve{i}"))
            )
            for i, port in enumerate(ports, 1)
        ]
        for receiver in receivers:
            _wait_healthy(receiver)
        collectors = []
        for i, port in enumerate(ports, 1):
            rotel, rotel_port = _rotel(rotel_agent, port, token, tmp_path, f"rotel{i}")
            stack.enter_context(_running(rotel))
            _wait_until(lambda p=rotel_port: _accepts_connections(p), rotel, "OTLP/gRPC port open")
            collectors.append((rotel, rotel_port))

        # Each span reaches the database twice, through different processes, often
        # at the same moment: the key (start_time, trace_id, span_id) must keep one.
        sent = _send_spans([port for _, port in collectors], traces, children)

        watch = receivers + [rotel for rotel, _ in collectors]
        _wait_for_spans(fresh_dsn, len(sent), watch)
        time.sleep(1.0)  # let the slower path's copy of each batch land too
        _wait_for_spans(fresh_dsn, len(sent), watch)

    versions = query(
        fresh_dsn, "SELECT version, count(*) FROM tokentrace.schema_migrations GROUP BY version"
    )
    assert versions and all(n == 1 for _, n in versions), versions
    _assert_each_span_once(fresh_dsn, sent)
    _assert_genai_figures(fresh_dsn, traces)
    # The rollup analysts read counts each call once.
    rollup = query(
        fresh_dsn, "SELECT sum(calls), sum(output_tokens) FROM tokentrace.efficiency('1 day')"
    )
    assert rollup[0] == (traces, _expected_output_tokens(traces))


def _export_request(
    days: Sequence[int], spans_per_day: int, salt: int
) -> tuple[bytes, set[tuple[bytes, bytes]]]:
    """An OTLP request whose spans started ``days`` days ago (it needs every one of those days)."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    now_ns = time.time_ns()
    ids: set[tuple[bytes, bytes]] = set()
    for day in days:
        for i in range(spans_per_day):
            span = scope.spans.add()
            span.trace_id = secrets.token_bytes(16)
            span.span_id = (salt << 32 | day << 16 | i).to_bytes(8, "big")
            span.name = "chat"
            span.start_time_unix_nano = now_ns - day * 86_400_000_000_000 - i * 1_000_000
            span.end_time_unix_nano = span.start_time_unix_nano + 50_000_000
            ids.add((span.trace_id, span.span_id))
    return request.SerializeToString(), ids


def test_receivers_creating_the_same_new_days_at_once_lose_nothing(
    fresh_dsn: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """Two receivers, sixteen requests at the same instant, each needing the same 12 new days.

    Every first write of a day creates its partition; the writers of both processes
    must agree on that without refusing a batch (a refused batch is an error a
    collector does not retry: the spans would be lost).
    """
    token = secrets.token_urlsafe(16)
    ports = [_free_port(), _free_port()]
    requests = [_export_request(range(1, 13), 5, salt) for salt in range(16)]
    with ExitStack() as stack:
        receivers = [
            stack.enter_context(
                _running(_serve(subprocess_env, fresh_dsn, token, port, tmp_path, f"serve{i}"))
            )
            for i, port in enumerate(ports, 1)
        ]
        for receiver in receivers:
            _wait_healthy(receiver)
        channels = [
            stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}")) for port in ports
        ]
        calls = [
            ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            for ch in channels
        ]
        metadata = (("authorization", f"Bearer {token}"),)
        for call in calls:  # connected before the race starts
            call(b"", timeout=30, metadata=metadata)
        barrier = threading.Barrier(len(requests))

        def export(index: int) -> str:
            barrier.wait()
            try:
                calls[index % 2](requests[index][0], timeout=60, metadata=metadata)
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
            return "OK"

        with ThreadPoolExecutor(len(requests)) as pool:
            outcomes = list(pool.map(export, range(len(requests))))
    assert outcomes == ["OK"] * len(requests), outcomes
    sent = set().union(*(ids for _, ids in requests))
    _assert_each_span_once(fresh_dsn, sent)


def _request_of(spans: Sequence[tuple[bytes, bytes, int]]) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for trace_id, span_id, start_ns in spans:
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name = trace_id, span_id, "chat"
        span.start_time_unix_nano, span.end_time_unix_nano = start_ns, start_ns + 1_000_000
    return request.SerializeToString()


def test_two_receivers_storing_the_same_spans_in_any_order_do_not_deadlock(
    fresh_dsn: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """The same spans reach two receivers at once, in opposite orders (two agents that
    batched them differently, say): both requests must succeed on the first try."""
    token = secrets.token_urlsafe(16)
    ports = [_free_port(), _free_port()]
    now_ns = time.time_ns()
    # Today's partitions exist before the race: the partition race is another test's.
    partitions = (
        "SELECT tokentrace.ensure_partitions(ARRAY[d - 1, d]) "
        "FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS d) today"
    )
    with ExitStack() as stack:
        receivers = [
            stack.enter_context(
                _running(_serve(subprocess_env, fresh_dsn, token, port, tmp_path, f"serve{i}"))
            )
            for i, port in enumerate(ports, 1)
        ]
        for receiver in receivers:
            _wait_healthy(receiver)
        query(fresh_dsn, partitions)
        channels = [stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{p}")) for p in ports]
        calls = [
            ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            for ch in channels
        ]
        metadata = (("authorization", f"Bearer {token}"),)
        outcomes: list[str] = []
        sent: set[tuple[bytes, bytes]] = set()
        for _ in range(5):
            spans = [
                (secrets.token_bytes(16), secrets.token_bytes(8), now_ns - i * 1000)
                for i in range(2000)
            ]
            sent |= {(t, s) for t, s, _ in spans}
            bodies = [_request_of(spans), _request_of(spans[::-1])]
            barrier = threading.Barrier(2)

            def export(
                i: int, bodies: list[bytes] = bodies, barrier: threading.Barrier = barrier
            ) -> str:
                barrier.wait()
                try:
                    calls[i](bodies[i], timeout=60, metadata=metadata)
                except grpc.RpcError as exc:
                    return f"{exc.code().name}: {exc.details()}"
                return "OK"

            with ThreadPoolExecutor(2) as pool:
                outcomes += list(pool.map(export, range(2)))
    assert outcomes == ["OK"] * len(outcomes), outcomes
    _assert_each_span_once(fresh_dsn, sent)
