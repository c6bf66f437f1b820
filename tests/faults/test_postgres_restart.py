"""PostgreSQL stopped and started again during a minute of steady OTLP/gRPC ingest.

The official OpenTelemetry OTLP/gRPC exporter, in its own process, sends spans at a
fixed rate through a ``BatchSpanProcessor`` (as an application would) to a
``tokentrace serve`` process, which stores them in an embedded PostgreSQL of this
module's own. Some seconds in, PostgreSQL is stopped (``pg_ctl stop -m fast``,
which also cuts the receiver's connections) and, after a few seconds, started again.
While it is down the receiver answers ``UNAVAILABLE`` with a retry delay and the
exporter retries. At the end every span sent must be stored exactly once.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import pgcontrol
from tests.faults.conftest import (
    assert_each_span_stored_once,
    delivery,
    exporter_retries,
    grpc_stream,
    stored_counts,
)
from tests.integration.receiver.clients import finish_sender_logged, start_sender
from tests.integration.receiver.test_serve_process import ServeProcess
from tokentrace.store.embedded import embedded_dsn

SECONDS = 60
RATE = 300  # spans per second
STOP_AFTER_S = 15
DOWN_S = 4  # the exporter's retries (2 s apart, at most 6 in all) must outlast the outage
SERVICE = "fault-pg-restart"


class OwnPostgres:
    """An embedded server of this test's own (stopping it disturbs no other test)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.dsn = embedded_dsn(data)

    def stop(self) -> None:
        pgcontrol.stop(self.data)

    def start(self) -> None:
        pgcontrol.start(self.data)


@pytest.fixture
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    pg = OwnPostgres(tmp_path_factory.mktemp("fault-pg") / "data")
    yield pg
    # pgserver's exit hook only knows the first postmaster, not one started by pg_ctl.
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        pgcontrol.stop(pg.data)


def test_postgres_restart_during_steady_grpc_ingest(
    own_pg: OwnPostgres, subprocess_env: dict[str, str], record_figures: Any
) -> None:
    server = ServeProcess(
        ["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0", "--dsn", own_pg.dsn],
        subprocess_env,
    )
    try:
        port = int(server.wait_for(r"OTLP/gRPC listening on 127\.0\.0\.1:(\d+)$").group(1))
        config = grpc_stream(SERVICE, SECONDS, RATE, port)
        began = time.monotonic()
        sender = start_sender(config, subprocess_env)
        time.sleep(max(began + STOP_AFTER_S - time.monotonic(), 0))
        before_stop = stored_counts(own_pg.dsn, SERVICE)[0]
        assert before_stop > 0, "nothing was stored before the outage"
        own_pg.stop()
        stopped_at = time.monotonic() - began
        time.sleep(DOWN_S)
        own_pg.start()
        down_s = time.monotonic() - began - stopped_at
        report, log = finish_sender_logged(sender, timeout=SECONDS * 3)
        elapsed = time.monotonic() - began
    finally:
        server.stop()
    stored, distinct = stored_counts(own_pg.dsn, SERVICE)
    retries = exporter_retries(log)
    record_figures(
        test="postgres stopped and restarted during OTLP/gRPC ingest",
        rate_spans_per_s=RATE,
        seconds=round(elapsed, 1),
        outage_at_s=round(stopped_at, 1),
        outage_s=round(down_s, 1),
        exporter_retries=retries,
        **delivery(report, stored, distinct),
    )
    assert retries > 0, f"the outage never reached the exporter:\n{log}"
    assert_each_span_stored_once(report, stored, distinct, SECONDS * RATE)
