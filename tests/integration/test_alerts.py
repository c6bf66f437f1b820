"""The alerts on real PostgreSQL, fed spans through the real OTLP/HTTP receiver:
each alert around its threshold, min_calls, the HTTP endpoint, the CLI's exit
statuses, the gauges on the real OTel SDK, and `tokentrace serve` exporting them
through the real OTLP exporter to a small local OTLP/HTTP sink."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.integration.receiver.clients import Http, pb_request, pb_span, span_ids
from tests.integration.receiver.conftest import settings
from tests.integration.receiver.test_serve_process import ServeProcess
from tests.unit.test_alert_metrics import points
from tokentrace import alerts, cli, reports
from tokentrace.alert_metrics import AlertGauges, store_evaluator
from tokentrace.alerts import Thresholds
from tokentrace.config import ConfigError
from tokentrace.receiver.server import Receiver

NS_PER_MS = 1_000_000
HOUR_NS = 3600 * 1000 * NS_PER_MS
_salt = iter(range(1000, 10**6))


def calls(
    model: str, n: int, *, ago_hours: float, ms: float, tokens: int = 50, errors: int = 0
) -> list[Span]:
    """``n`` chat calls of ``model`` started ``ago_hours`` ago, the first ``errors`` failed."""
    start = time.time_ns() - int(ago_hours * HOUR_NS)
    spans = []
    for i, (trace_id, span_id) in enumerate(span_ids(n, next(_salt))):
        span = pb_span(trace_id, span_id, output_tokens=tokens, model=model)
        span.start_time_unix_nano = start + i * NS_PER_MS
        span.end_time_unix_nano = span.start_time_unix_nano + int(ms * NS_PER_MS)
        if i < errors:
            span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="boom"))
        spans.append(span)
    return spans


@pytest.fixture
def receiver(db: str) -> Iterator[Receiver]:
    started = Receiver(settings(), db)
    started.start()
    yield started
    started.stop()


def send(receiver: Receiver, *groups: list[Span]) -> None:
    client = Http(receiver.http_port)
    try:
        for spans in groups:
            result = client.post(pb_request(spans))
            assert result.status == 200, result.body
    finally:
        client.close()


def fleet(receiver: Receiver) -> None:
    """Baselines three days ago; the last 24 h two hours ago; error traffic ten minutes ago."""
    send(
        receiver,
        calls("slow", 12, ago_hours=72, ms=1000),  # 20 ms/token
        calls("slow", 12, ago_hours=2, ms=2000),  # 40: ratio 2.0
        calls("steady", 12, ago_hours=72, ms=1000),
        calls("steady", 12, ago_hours=2, ms=1400),  # 28: ratio 1.4
        calls("few", 12, ago_hours=72, ms=1000),
        calls("few", 5, ago_hours=2, ms=2000),  # ratio 2.0 on 5 calls
        calls("flaky", 20, ago_hours=1 / 6, ms=1000, errors=2),  # 0.10
        calls("fine", 25, ago_hours=1 / 6, ms=1000, errors=1),  # 0.04
        calls("tiny", 5, ago_hours=1 / 6, ms=1000, errors=3),  # 0.6 on 5 calls
    )


def by_key(found: list[alerts.Alert]) -> dict[tuple[str, str | None], alerts.Alert]:
    return {(a.name, a.model): a for a in found}


def check(db: str, thresholds: Thresholds, disk_cap_gb: Any = None) -> dict[tuple[str, str | None], alerts.Alert]:
    with reports.report_connection(db) as conn:
        return by_key(alerts.check(conn, thresholds, disk_cap_gb))


# --- each alert around its threshold -----------------------------------------------------
def test_regression_and_error_rate_around_their_thresholds(receiver: Receiver, db: str) -> None:
    fleet(receiver)
    found = check(db, Thresholds())
    firing = {key for key, a in found.items() if a.firing}
    assert firing == {("regression", "slow"), ("error_rate", "flaky")}
    assert found["regression", "slow"].value == 2.0
    assert found["regression", "slow"].detail == (
        "40 ms/token in the last 24 h against 20 in the 60 days before (12 and 12 calls)"
    )
    assert found["regression", "steady"].value == pytest.approx(1.4)
    assert found["regression", "few"].value == 2.0
    assert found["regression", "few"].detail.endswith("too few calls to fire (at least 10 in each)")
    assert (found["error_rate", "flaky"].value, found["error_rate", "fine"].value) == (0.1, 0.04)
    assert found["error_rate", "flaky"].detail == "2 errors in 20 calls in the last 1 h"
    assert found["error_rate", "tiny"].value == 0.6 and not found["error_rate", "tiny"].firing
    # Models with no baseline yet (the error traffic is new) are listed, never firing.
    assert found["regression", "flaky"].value is None
    assert found["regression", "flaky"].detail == (
        "no calls in the 60 days before the last 24 h to compare with"
    )
    # The regression traffic is two hours old: outside the 1 h error window, inside 3 h.
    assert ("error_rate", "slow") not in found
    assert check(db, Thresholds(error_window_hours=3))["error_rate", "slow"].value == 0.0

    # Just past each value the other way round.
    moved = check(db, Thresholds(regression_ratio=1.39, error_rate=0.039, min_calls=5))
    assert {key for key, a in moved.items() if a.firing} == {
        ("regression", "slow"), ("regression", "steady"), ("regression", "few"),
        ("error_rate", "flaky"), ("error_rate", "fine"), ("error_rate", "tiny"),
    }  # fmt: skip
    strict = check(db, Thresholds(regression_ratio=2.01, error_rate=0.11))
    assert not any(a.firing for a in strict.values())


def test_min_calls_counts_both_windows(receiver: Receiver, db: str) -> None:
    fleet(receiver)
    assert check(db, Thresholds(min_calls=5))["regression", "few"].firing is True
    assert check(db, Thresholds(min_calls=6))["regression", "few"].firing is False
    assert check(db, Thresholds(min_calls=12))["regression", "slow"].firing is True
    assert check(db, Thresholds(min_calls=13))["regression", "slow"].firing is False
    assert check(db, Thresholds(min_calls=20))["error_rate", "flaky"].firing is True
    assert check(db, Thresholds(min_calls=21))["error_rate", "flaky"].firing is False


def test_days_until_the_disk_cap_is_the_footprint_reports(receiver: Receiver, db: str) -> None:
    fleet(receiver)
    assert check(db, Thresholds())["disk_cap", None] == alerts.Alert(
        "disk_cap", None, None, 7.0, False, "no disk cap set (TOKENTRACE_DISK_CAP_GB)"
    )
    with reports.report_connection(db) as conn:
        foot = reports.footprint(conn)
    total, per_day = foot["total_bytes"], foot["bytes_per_day"]
    assert per_day > 0 and foot["projected_bytes"] > total + 10 * per_day
    cap_gb = (total + 3 * per_day) / 1e9  # three days away
    found = check(db, Thresholds(), cap_gb)["disk_cap", None]
    with reports.report_connection(db) as conn:
        reported = reports.footprint(conn, disk_cap_gb=cap_gb)["days_until_cap"]
    assert found.value == pytest.approx(reported, rel=0.05)
    assert found.value == pytest.approx(3.0, rel=0.05)
    assert found.firing is True and found.threshold == 7.0
    assert check(db, Thresholds(disk_days=2), cap_gb)["disk_cap", None].firing is False
    fits = check(db, Thresholds(), foot["projected_bytes"] * 2 / 1e9)["disk_cap", None]
    assert (fits.value, fits.firing) == (None, False)
    assert fits.detail.endswith("never reaches the cap")


# --- HTTP ----------------------------------------------------------------------------------
def test_http_alerts(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENTRACE_ALERT_MIN_CALLS", "5")
    monkeypatch.delenv("TOKENTRACE_DISK_CAP_GB", raising=False)
    receiver = Receiver(settings(auth_token="s3cret"), db)
    receiver.start()
    client = Http(receiver.http_port)
    try:
        send_auth = Http(receiver.http_port)
        for spans in (calls("slow", 12, ago_hours=72, ms=1000), calls("slow", 5, ago_hours=2, ms=2000)):
            assert send_auth.post(pb_request(spans), Authorization="Bearer s3cret").status == 200
        send_auth.close()
        assert client.get("/telemetry/alerts").status == 401
        result = client.get("/telemetry/alerts", Authorization="Bearer s3cret")
        assert result.status == 200 and result.headers["content-type"] == "application/json"
        body = result.json()
        with reports.report_connection(db) as conn:
            expected = alerts.report(conn, Thresholds(min_calls=5))
        assert body == expected
        assert body["thresholds"] == {
            "regression_ratio": 1.5, "error_rate": 0.05, "error_window_hours": 1.0,
            "disk_days": 7.0, "min_calls": 5,
        }  # fmt: skip
        assert body["firing"] == 1
        assert body["alerts"][0] == {
            "name": "regression", "model": "slow", "value": 2.0, "threshold": 1.5, "firing": True,
            "detail": "40 ms/token in the last 24 h against 20 in the 60 days before (5 and 12 calls)",
        }  # fmt: skip
        bad = client.get("/telemetry/alerts?min_calls=3", Authorization="Bearer s3cret")
        assert bad.status == 400
        assert bad.json() == {
            "status": "error",
            "error": "unknown query parameter 'min_calls' (allowed: none)",
        }
    finally:
        client.close()
        receiver.stop()


def test_http_alerts_answer_503_while_the_database_is_away() -> None:
    receiver = Receiver(settings(), "postgresql://tokentrace@127.0.0.1:9/none?connect_timeout=2")
    receiver.start()
    client = Http(receiver.http_port)
    try:
        result = client.get("/telemetry/alerts")
        assert result.status == 503 and result.headers["retry-after"] == "2"
        assert result.json() == {"status": "error", "error": "database unavailable; retry later"}
    finally:
        client.close()
        receiver.stop()


def test_a_bad_threshold_stops_the_receiver_with_the_variable_named(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENTRACE_ALERT_ERROR_RATE", "5%")
    with pytest.raises(ConfigError, match=r"^TOKENTRACE_ALERT_ERROR_RATE='5%' is not a number$"):
        Receiver(settings(), db)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"TOKENTRACE_ALERT_DISK_DAYS": "soon"}, r"TOKENTRACE_ALERT_DISK_DAYS='soon' is not a number$"),
        ({"OTEL_METRICS_EXPORTER": "statsd"},
         r"OTEL_METRICS_EXPORTER: no metrics exporter 'statsd' is installed$"),
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"},
         r"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL='http/json': metrics go out as grpc or http/protobuf$"),
    ],
)  # fmt: skip
def test_serve_exits_2_on_a_bad_threshold_or_exporter(
    subprocess_env: dict[str, str], setting: dict[str, str], message: str
) -> None:
    env = dict(subprocess_env, **setting)
    server = ServeProcess(["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0"], env)
    try:
        assert server.process.wait(timeout=60) == 2
        server.wait_for(r"configuration error: " + message)
    finally:
        server.stop()


# --- CLI -----------------------------------------------------------------------------------
def test_cli_exit_status_and_output(
    receiver: Receiver, db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKENTRACE_DISK_CAP_GB", raising=False)
    assert cli.main(["alerts", "--dsn", db]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "tokentrace alerts: 0 firing of 1 (regression ≥ 1.5×, error rate ≥ 0.05 over 1 h, "
        "disk cap ≤ 7 days away; at least 10 calls)"
    )
    fleet(receiver)
    assert cli.main(["alerts", "--dsn", db]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tokentrace alerts: 2 firing of ")
    assert lines[1].split() == ["state", "alert", "model", "value", "threshold", "detail"]
    assert lines[3].split()[:5] == ["FIRING", "regression", "slow", "2", "1.5"]
    assert lines[4].split()[:5] == ["FIRING", "error_rate", "flaky", "0.1", "0.05"]
    assert lines[5].split()[0] == "ok"

    assert cli.main(["alerts", "--dsn", db, "--json", "--regression-ratio", "2.5",
                     "--error-rate", "0.7"]) == 0  # fmt: skip
    payload = json.loads(capsys.readouterr().out)
    assert payload["firing"] == 0 and payload["thresholds"]["regression_ratio"] == 2.5
    with reports.report_connection(db) as conn:
        assert payload == alerts.report(conn, Thresholds(regression_ratio=2.5, error_rate=0.7))

    monkeypatch.setenv("TOKENTRACE_ALERT_REGRESSION_RATIO", "3")
    assert cli.main(["alerts", "--dsn", db, "--error-rate", "0.7"]) == 0  # env: no regression fires
    assert cli.main(["alerts", "--dsn", db, "--error-rate", "0.7", "--regression-ratio", "1.9"]) == 1
    capsys.readouterr()


def test_cli_usage_errors_are_2_and_an_unreachable_database_is_3(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["alerts", "--dsn", db, "--min-calls", "0"]) == 2
    assert capsys.readouterr().err == "tokentrace alerts: --min-calls='0' must be at least 1\n"
    monkeypatch.setenv("TOKENTRACE_ALERT_ERROR_WINDOW_HOURS", "-1")
    assert cli.main(["alerts", "--dsn", db]) == 2
    assert capsys.readouterr().err == (
        "tokentrace alerts: TOKENTRACE_ALERT_ERROR_WINDOW_HOURS='-1' must be greater than 0\n"
    )
    monkeypatch.delenv("TOKENTRACE_ALERT_ERROR_WINDOW_HOURS")
    assert cli.main(["alerts", "--dsn", db, "--disk-cap-gb", "lots"]) == 2
    assert "disk cap must be a number of gigabytes, not 'lots'" in capsys.readouterr().err
    closed = "postgresql://tokentrace@127.0.0.1:9/none?connect_timeout=2"
    assert cli.main(["alerts", "--dsn", closed]) == 3
    assert capsys.readouterr().err.startswith("tokentrace alerts: cannot evaluate the alerts: ")


def test_the_command_is_installed_and_exits_1_when_firing(
    receiver: Receiver, db: str, subprocess_env: dict[str, str]
) -> None:
    fleet(receiver)
    done = subprocess.run(
        [sys.executable, "-m", "tokentrace", "alerts", "--json"],
        env=subprocess_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["firing"] == 2


# --- gauges --------------------------------------------------------------------------------
def test_gauges_read_the_store(receiver: Receiver, db: str) -> None:
    fleet(receiver)
    pool = reports.report_pool(db)
    metrics_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metrics_reader])
    AlertGauges(provider.get_meter("test"), store_evaluator(pool, Thresholds()))
    try:
        got = points(metrics_reader)
        firing = got["tokentrace.alert.firing"]
        on = {dict(k)["tokentrace.alert.name"] + ":" + dict(k).get("tokentrace.alert.model", "-")
              for k, v in firing.items() if v == 1}  # fmt: skip
        assert on == {"regression:slow", "error_rate:flaky"}
        slow = (("tokentrace.alert.model", "slow"), ("tokentrace.alert.name", "regression"))
        assert got["tokentrace.alert.value"][slow] == 2.0
        assert got["tokentrace.alert.threshold"][slow] == 1.5
        assert got["tokentrace.alert.threshold"][(("tokentrace.alert.name", "disk_cap"),)] == 7.0
        assert got["tokentrace.alert.evaluated"] == {(): 1}
        assert len(firing) == len(check(db, Thresholds()))
    finally:
        provider.shutdown()
        pool.close()


def test_gauges_survive_an_unreachable_database(caplog: pytest.LogCaptureFixture) -> None:
    pool = reports.report_pool("postgresql://tokentrace@127.0.0.1:9/none?connect_timeout=2")
    metrics_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metrics_reader])
    AlertGauges(provider.get_meter("test"), store_evaluator(pool, Thresholds()))
    try:
        assert points(metrics_reader) == {"tokentrace.alert.evaluated": {(): 0}}
        assert any("cannot evaluate the alerts" in m for m in caplog.messages)
    finally:
        provider.shutdown()
        pool.close()


# --- `tokentrace serve` → real OTLP exporter → a local OTLP/HTTP sink ----------------------
class _Sink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[str, ExportMetricsServiceRequest]] = queue.Queue()
        super().__init__(("127.0.0.1", 0), _SinkHandler)


class _SinkHandler(BaseHTTPRequestHandler):
    server: _Sink

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.put((self.path, ExportMetricsServiceRequest.FromString(body)))
        answer = ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _gauge_points(request: ExportMetricsServiceRequest) -> dict[str, dict[tuple[Any, ...], float]]:
    out: dict[str, dict[tuple[Any, ...], float]] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.gauge.data_points:
                    key = tuple(sorted((a.key, a.value.string_value) for a in p.attributes))
                    value = p.as_double if p.HasField("as_double") else p.as_int
                    out.setdefault(metric.name, {})[key] = value
    return out


class _GrpcSink(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC metrics endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[str, ExportMetricsServiceRequest]] = queue.Queue()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
        self.requests.put(("grpc", request))
        return ExportMetricsServiceResponse()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_serve_exports_the_gauges_over_otlp(
    receiver: Receiver, db: str, subprocess_env: dict[str, str], protocol: str
) -> None:
    fleet(receiver)
    if protocol == "grpc":
        grpc_sink = _GrpcSink()
        requests, endpoint, expected_path = grpc_sink.requests, f"http://127.0.0.1:{grpc_sink.port}", "grpc"
        stop = lambda: grpc_sink.server.stop(None)  # noqa: E731
    else:
        sink = _Sink()
        threading.Thread(target=sink.serve_forever, args=(0.1,), daemon=True).start()
        requests, endpoint = sink.requests, f"http://127.0.0.1:{sink.server_port}/v1/metrics"
        expected_path = "/v1/metrics"

        def stop() -> None:
            sink.shutdown()
            sink.server_close()

    env = dict(
        subprocess_env,
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=endpoint,
        OTEL_METRIC_EXPORT_INTERVAL="300",
    )
    env.pop("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", None)
    if protocol == "grpc":
        env.pop("OTEL_EXPORTER_OTLP_PROTOCOL", None)  # grpc is the default for `otlp`
        env["OTEL_EXPORTER_OTLP_METRICS_INSECURE"] = "true"
    else:
        env["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"] = protocol
    env.pop("OTEL_SERVICE_NAME", None)
    env.pop("OTEL_RESOURCE_ATTRIBUTES", None)
    server = ServeProcess(["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0",
                           "--no-prune"], env)  # fmt: skip
    try:
        name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
        server.wait_for(rf"alert metrics exported through {name}$")
        path, request = requests.get(timeout=60)
        got = _gauge_points(request)
        while "tokentrace.alert.firing" not in got:  # the first export may precede the first read
            path, request = requests.get(timeout=60)
            got = _gauge_points(request)
        assert path == expected_path
        resource = {a.key: a.value.string_value for a in request.resource_metrics[0].resource.attributes}
        assert resource["service.name"] == "tokentrace"
        scope = request.resource_metrics[0].scope_metrics[0].scope
        assert scope.name == "tokentrace.alerts"
        firing = got["tokentrace.alert.firing"]
        slow = (("tokentrace.alert.model", "slow"), ("tokentrace.alert.name", "regression"))
        flaky = (("tokentrace.alert.model", "flaky"), ("tokentrace.alert.name", "error_rate"))
        assert {k for k, v in firing.items() if v == 1} == {slow, flaky}
        assert got["tokentrace.alert.value"][slow] == 2.0
        assert got["tokentrace.alert.threshold"][flaky] == 0.05
        assert got["tokentrace.alert.evaluated"] == {(): 1}
    finally:
        server.stop()
        stop()
