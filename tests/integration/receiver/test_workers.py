"""`tokentrace serve --workers N`: N processes share both ports, all store, all drain."""

from __future__ import annotations

import re
import signal
import socket

import grpc

from tests.helpers import query
from tests.integration.receiver.clients import Http, valid_request
from tests.integration.receiver.test_serve_process import ServeProcess, serve  # noqa: F401
from tokentrace.receiver.grpc_server import FULL_METHOD

WORKERS = 3
# The kernel spreads connections by a hash of their addresses: with this many, each of
# three workers gets at least one unless chance is very unkind ((2/3)^48 ≈ 4e-9 each).
CONNECTIONS = 48
_STOPPED = r"\[worker (\d+)\]: stopped after draining for [\d.]+ s; (\d+) spans stored, 0 rejected"


def _grpc_on_a_new_connection(port: int, body: bytes) -> None:
    # A local subchannel pool: a new channel must not reuse another one's connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        channel.unary_unary(FULL_METHOD, _registered_method=True)(body, timeout=30)


def test_workers_share_the_ports_all_store_and_all_drain(
    serve: list[ServeProcess],  # noqa: F811
    db: str,
    subprocess_env: dict[str, str],
) -> None:
    server = ServeProcess(
        ["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0",
         "--workers", str(WORKERS)],
        subprocess_env,
    )  # fmt: skip
    serve.append(server)
    grpc_port = int(server.wait_for(r"OTLP/gRPC listening on 127\.0\.0\.1:(\d+)$").group(1))
    http_port = int(server.wait_for(r"listening on http://127\.0\.0\.1:(\d+)$").group(1))
    server.wait_for(rf"{WORKERS} receiver worker processes share both ports")

    sent = 0
    for i in range(CONNECTIONS):  # a new connection per request, half of them gRPC
        body = valid_request(2, salt=1000 + i)
        if i % 2:
            _grpc_on_a_new_connection(grpc_port, body)
        else:
            client = Http(http_port)
            assert client.post(body).status == 200
            client.close()
        sent += 2

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    stored_by: dict[int, int] = {}
    for _ in range(WORKERS):
        match = server.wait_for(_STOPPED)
        stored_by[int(match.group(1))] = int(match.group(2))
    server.wait_for(rf"all {WORKERS} workers stopped \(exit statuses \[0, 0, 0\]\)")
    assert sorted(stored_by) == list(range(WORKERS))
    assert all(count > 0 for count in stored_by.values()), stored_by
    assert sum(stored_by.values()) == sent
    assert query(db, "SELECT count(*) FROM tokentrace.spans")[0][0] == sent
    # Every port is free again once the supervisor is gone.
    for port in (grpc_port, http_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


def test_workers_refuse_a_port_in_use_even_by_another_set_of_workers(
    serve: list[ServeProcess],  # noqa: F811
    db: str,
    subprocess_env: dict[str, str],
) -> None:
    first = ServeProcess(
        ["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0", "--workers", "2"],
        subprocess_env,
    )
    serve.append(first)
    grpc_port = int(first.wait_for(r"OTLP/gRPC listening on 127\.0\.0\.1:(\d+)$").group(1))
    first.wait_for("2 receiver worker processes share both ports")
    # SO_REUSEPORT would let a second set of workers share the port silently: refused.
    second = ServeProcess(
        ["--grpc-endpoint", f"127.0.0.1:{grpc_port}", "--http-endpoint", "127.0.0.1:0",
         "--workers", "2"],
        subprocess_env,
    )  # fmt: skip
    serve.append(second)
    assert second.process.wait(timeout=60) == 1
    second.wait_for(
        rf"cannot listen for OTLP/gRPC on 127\.0\.0\.1:{grpc_port}: Address already in use"
    )
    first.process.send_signal(signal.SIGINT)  # Ctrl-C: the supervisor drains its workers
    assert first.process.wait(timeout=60) == 0
    assert re.search(r"all 2 workers stopped", "".join(first.log + _drain(first)))


def _drain(server: ServeProcess) -> list[str]:
    lines = []
    while not server.lines.empty():
        lines.append(server.lines.get())
    return lines
