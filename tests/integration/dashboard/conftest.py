"""Fixtures of the dashboard tests: receivers on free loopback ports that serve the page at ``/``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import psycopg
import pytest

from tokentrace.receiver.server import Receiver
from tokentrace.receiver.settings import Endpoint, ServeSettings
from tests.integration.dashboard.support import Served, StartServed


@pytest.fixture
def clean_db(db: str) -> str:
    """``db`` with any rollups emptied too (the shared fixture drops only the span partitions)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF to_regclass('tokentrace.span_rollups') IS NOT NULL THEN"
            " TRUNCATE tokentrace.span_rollups; END IF; END $$"
        )
    return db


@pytest.fixture
def start_dashboard(clean_db: str) -> Iterator[StartServed]:
    """Start receivers (loopback, free ports) that serve the dashboard at ``/``."""
    started: list[Receiver] = []

    def start(**overrides: object) -> Served:
        settings = ServeSettings(grpc_endpoint=Endpoint("127.0.0.1", 0), http_endpoint=Endpoint("127.0.0.1", 0),
                                 grace_seconds=5.0)  # fmt: skip
        receiver = Receiver(dataclasses.replace(settings, **overrides), clean_db)  # type: ignore[arg-type]
        receiver.start()
        started.append(receiver)
        return Served(receiver)

    yield start
    for receiver in started:
        receiver.stop()


