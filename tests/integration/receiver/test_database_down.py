"""The database stops during a stream from the official exporters, then comes back.

This module runs its own embedded PostgreSQL (not the session one), stops it with
``pg_ctl`` while two exporter processes (gRPC and HTTP) are streaming, checks what
clients are told while it is down, starts it again, and then checks that every
span was stored exactly once.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from psycopg.conninfo import conninfo_to_dict

from tests.helpers import query
from tests.integration.receiver.clients import (
    Http,
    finish_sender_logged,
    grpc_export,
    start_sender,
    valid_request,
)
from tests.integration.receiver.conftest import settings
from tokentrace.receiver.server import Receiver
from tokentrace.store.embedded import embedded_dsn, psql_path
from tokentrace.store.migrate import migrate

STREAMED = 1500  # spans per exporter process
RATE = 400.0  # spans per second per process


def _pg_ctl(data: Path, *args: str, check: bool = True) -> None:
    command = [str(Path(psql_path()).with_name("pg_ctl")), "-D", str(data), "-w", *args]
    if os.geteuid() == 0:  # pgserver runs PostgreSQL as the `pgserver` user when we are root
        command = ["runuser", "-u", "pgserver", "--", *command]
    subprocess.run(command, check=check, capture_output=True, timeout=60)


class OwnPostgres:
    """An embedded server of this module's own, stopped and started with ``pg_ctl``."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.dsn = embedded_dsn(data)
        # Started again with pgserver's options: Unix socket only, in the same directory.
        self.socket_dir = str(conninfo_to_dict(self.dsn)["host"])

    def stop(self, check: bool = True) -> None:
        _pg_ctl(self.data, "-m", "fast", "stop", check=check)

    def start(self) -> None:
        log = str(self.data / "log")
        _pg_ctl(self.data, "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    pg = OwnPostgres(tmp_path_factory.mktemp("own-pg") / "data")
    migrate(pg.dsn)
    yield pg
    # pgserver's exit hook only knows the first postmaster, not the one restarted here.
    pg.stop(check=False)


def _count(dsn: str, service: str) -> tuple[int, int]:
    sql = (
        "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM tokentrace.spans "
        "WHERE service_name = %s"
    )
    row = query(dsn, sql, (service,))[0]
    return int(row[0]), int(row[1])


def _wait_for_rows(dsn: str, services: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(_count(dsn, s)[0] > 0 for s in services):
        assert time.monotonic() < deadline, "no spans arrived"
        time.sleep(0.05)


def _assert_retry_later(receiver: Receiver, http: Http) -> None:
    result = http.post(valid_request(2, salt=31))
    assert result.status == 503
    assert result.headers["retry-after"] == "2"
    status = Status.FromString(result.body)
    assert (status.code, status.message) == (14, "database unavailable; retry later")
    call = grpc_export(receiver.grpc_port, valid_request(2, salt=32))
    assert call.code == grpc.StatusCode.UNAVAILABLE
    assert RetryInfo.FromString(call.trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 2
    health = http.get("/healthz")
    assert health.status == 503 and health.json() == {
        "status": "unavailable",
        "database": "unreachable",
    }
    report = http.get("/telemetry/60day")
    assert report.status == 503 and report.headers["retry-after"] == "2"


def _until_accepted(http: Http, body: bytes, attempts: int) -> int:
    # Pooled connections opened before the restart fail once each, as a client would see.
    for _ in range(attempts):
        status = http.post(body).status
        if status != 503:
            return status
    return status


def test_stream_survives_a_database_restart_exactly_once(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    receiver = Receiver(settings(grace_seconds=5.0, db_connections=2), own_pg.dsn)
    receiver.start()
    http = Http(receiver.http_port)
    try:
        env = dict(os.environ, TOKENTRACE_DATA_DIR=str(tmp_path / "unused"))
        endpoints = {"grpc": receiver.grpc_port, "http": receiver.http_port}
        senders = {
            protocol: start_sender(
                {
                    "service": f"stream-{protocol}",
                    "mode": "stream",
                    "count": STREAMED,
                    "rate": RATE,
                    "targets": [
                        {
                            "protocol": protocol,
                            "timeout": 30,
                            "endpoint": f"http://127.0.0.1:{port}",
                        }
                    ],
                },
                env,
            )
            for protocol, port in endpoints.items()
        }
        _wait_for_rows(own_pg.dsn, ["stream-grpc", "stream-http"])
        own_pg.stop()
        _assert_retry_later(receiver, http)
        time.sleep(1.0)
        own_pg.start()

        assert _until_accepted(http, valid_request(2, salt=31), attempts=4) == 200
        assert grpc_export(receiver.grpc_port, valid_request(2, salt=32)).code == grpc.StatusCode.OK
        assert http.get("/healthz").status == 200
        for protocol, sender in senders.items():
            report, log = finish_sender_logged(sender)
            assert report == {"sent": STREAMED, "ok_spans": STREAMED, "failed_batches": 0}, protocol
            assert "retrying in 2.00s" in log, (
                f"{protocol}: the outage never reached the exporter:\n{log}"
            )
            assert _count(own_pg.dsn, f"stream-{protocol}") == (STREAMED, STREAMED), protocol
    finally:
        http.close()
        receiver.stop()
    with psycopg.connect(own_pg.dsn) as conn:  # the database holds nothing twice
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM tokentrace.spans"
        ).fetchone()  # type: ignore[misc]
    assert total == distinct == 2 * STREAMED + 4
