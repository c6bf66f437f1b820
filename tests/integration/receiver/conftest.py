"""Receivers on free ports over the test database, and a throwaway TLS certificate."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tokentrace.receiver.server import Receiver
from tokentrace.receiver.settings import Endpoint, ServeSettings

StartReceiver = Callable[..., Receiver]


def settings(**overrides: Any) -> ServeSettings:
    """Loopback on ports the kernel picks (so tests never collide), short drain."""
    base = ServeSettings(
        grpc_endpoint=Endpoint("127.0.0.1", 0),
        http_endpoint=Endpoint("127.0.0.1", 0),
        grace_seconds=5.0,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def start_receiver(db: str) -> Iterator[StartReceiver]:
    """Start receivers (on ``db`` unless told otherwise); all are drained after the test."""
    started: list[Receiver] = []

    def start(dsn: str | None = None, **overrides: Any) -> Receiver:
        receiver = Receiver(settings(**overrides), db if dsn is None else dsn)
        receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def receiver(start_receiver: StartReceiver) -> Receiver:
    return start_receiver()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
