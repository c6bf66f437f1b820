"""The receiver killed with SIGKILL mid-stream, and started again on the same ports.

The official OTLP/gRPC exporter (own process, fixed rate, ``BatchSpanProcessor``)
streams spans to ``tokentrace serve``. Mid-stream the receiver is killed with
SIGKILL — no draining: requests in progress are lost, some may even be committed
without their answer reaching the client — and a new ``tokentrace serve`` is
started on the same ports a few seconds later. The exporter retries what was not
acknowledged (``UNAVAILABLE`` while nothing listens); batches the first receiver
had committed but not answered arrive again and are stored once, since a span's
identity is its (trace_id, span_id). At the end: every span sent is stored, and
none twice.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from tests.faults.conftest import (
    assert_each_span_stored_once,
    delivery,
    exporter_retries,
    free_port,
    grpc_stream,
    stored_counts,
)
from tests.integration.receiver.clients import finish_sender_logged, start_sender
from tests.integration.receiver.test_serve_process import ServeProcess

SECONDS = 30
RATE = 500  # spans per second
KILL_AFTER_S = 10
DOWN_S = 3
SERVICE = "fault-sigkill"


def _serve(grpc_port: int, http_port: int, env: dict[str, str]) -> ServeProcess:
    server = ServeProcess(
        ["--grpc-endpoint", f"127.0.0.1:{grpc_port}", "--http-endpoint", f"127.0.0.1:{http_port}"],
        env,
    )
    server.wait_for(rf"OTLP/gRPC listening on 127\.0\.0\.1:{grpc_port}$")
    return server


def test_receiver_killed_mid_stream_and_restarted(
    db: str, subprocess_env: dict[str, str], record_figures: Any
) -> None:
    grpc_port, http_port = free_port(), free_port()
    first = _serve(grpc_port, http_port, subprocess_env)
    second: ServeProcess | None = None
    try:
        config = grpc_stream(SERVICE, SECONDS, RATE, grpc_port)
        began = time.monotonic()
        sender = start_sender(config, subprocess_env)
        time.sleep(max(began + KILL_AFTER_S - time.monotonic(), 0))
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=30) == -signal.SIGKILL
        killed_at = time.monotonic() - began
        stored_by_first = stored_counts(db, SERVICE)[0]
        assert stored_by_first > 0, "nothing was stored before the kill"
        time.sleep(DOWN_S)
        second = _serve(grpc_port, http_port, subprocess_env)
        report, log = finish_sender_logged(sender, timeout=SECONDS * 4)
        elapsed = time.monotonic() - began
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=60) == 0
        drained = second.wait_for(r"(\d+) spans stored, (\d+) rejected since start")
    finally:
        first.stop()
        if second is not None:
            second.stop()
    stored, distinct = stored_counts(db, SERVICE)
    stored_by_second = int(drained.group(1))
    retries = exporter_retries(log)
    record_figures(
        test="receiver SIGKILLed mid-stream and restarted on the same ports",
        rate_spans_per_s=RATE,
        seconds=round(elapsed, 1),
        killed_at_s=round(killed_at, 1),
        down_s=DOWN_S,
        exporter_retries=retries,
        stored_by_first_receiver=stored_by_first,
        stored_by_second_receiver=stored_by_second,
        **delivery(report, stored, distinct),
    )
    assert retries > 0, f"the kill never reached the exporter:\n{log}"
    assert_each_span_stored_once(report, stored, distinct, SECONDS * RATE)
    assert stored_by_first + stored_by_second == stored
