"""`tokentrace serve` as a process: what it logs, draining on SIGTERM, exit status."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers import query
from tests.integration.receiver.clients import Http, HttpResult, valid_request
from tests.integration.receiver.test_overload import spans_locked, wait_for_lock_waiter

# `tokentrace serve` through the receiver's own entry points (what the main CLI calls).
SERVE = (
    "import argparse, sys; from tokentrace.receiver import cli; p = argparse.ArgumentParser(); "
    "cli.add_arguments(p); sys.exit(cli.run(p.parse_args(sys.argv[1:])))"
)


class ServeProcess:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, *args],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no log line matching {pattern!r}:\n{''.join(self.log)}"
                ) from None
            self.log.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve(subprocess_env: dict[str, str]) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for process in started:
        process.stop()


def test_logs_where_it_listens_drains_on_sigterm_and_exits_0(
    serve: list[ServeProcess], db: str, subprocess_env: dict[str, str]
) -> None:
    dsn = f"{db}&password=hunter2"
    server = ServeProcess(
        ["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0", "--dsn", dsn],
        subprocess_env,
    )
    serve.append(server)
    server.wait_for(r"OTLP/gRPC listening on 127\.0\.0\.1:\d+$")
    port = int(
        server.wait_for(r"OTLP/HTTP and reports listening on http://127\.0\.0\.1:(\d+)$").group(1)
    )
    database = server.wait_for(r"database: (.*)$").group(1)
    assert "hunter2" not in database and "password=***" in database

    client = Http(port)
    assert client.post(valid_request(2, salt=41)).status == 200
    client.close()

    held: list[HttpResult] = []
    holder = Http(port)
    with spans_locked(db):
        thread = threading.Thread(
            target=lambda: held.append(holder.post(valid_request(3, salt=42)))
        )
        thread.start()
        wait_for_lock_waiter(db)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for("SIGTERM received: draining")
        time.sleep(0.3)
        assert server.process.poll() is None  # still waiting for the request in progress
    thread.join(timeout=30)
    holder.close()
    assert held[0].status == 200 and held[0].headers["connection"] == "close"
    assert server.process.wait(timeout=30) == 0
    server.wait_for(r"stopped after draining for [\d.]+ s; 5 spans stored, 0 rejected since start")
    assert query(db, "SELECT count(*) FROM tokentrace.spans")[0][0] == 5


def test_a_port_in_use_is_exit_status_1(
    serve: list[ServeProcess], subprocess_env: dict[str, str], db: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServeProcess(
            ["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", f"127.0.0.1:{port}"],
            subprocess_env,
        )
        serve.append(server)
        assert server.process.wait(timeout=30) == 1
    server.wait_for(rf"cannot listen for HTTP on 127\.0\.0\.1:{port}: Address already in use")


def test_a_bad_environment_value_is_exit_status_2(
    serve: list[ServeProcess], subprocess_env: dict[str, str]
) -> None:
    server = ServeProcess([], dict(subprocess_env, TOKENTRACE_HTTP_ENDPOINT="localhost"))
    serve.append(server)
    assert server.process.wait(timeout=30) == 2
    server.wait_for(r"configuration error: TOKENTRACE_HTTP_ENDPOINT='localhost' is not HOST:PORT")
