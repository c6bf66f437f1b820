"""Fault tests: the figures each one measured are printed at the end of the run.

(Run ``pytest tests/faults`` to see them in the terminal summary; they are also
attached to each test's report as user properties, for JUnit XML.)
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest

from tests.helpers import query

FIGURES: list[dict[str, Any]] = []


@pytest.fixture
def record_figures(record_property: Any) -> Any:
    """``record_figures(test=..., sent=..., stored=..., ...)``: keep and show the numbers."""

    def record(**figures: Any) -> None:
        FIGURES.append(figures)
        for key, value in figures.items():
            record_property(key, value)
        print("fault figures:", json.dumps(figures))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault-test figures")
    for figures in FIGURES:
        terminalreporter.write_line(json.dumps(figures))


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stored_counts(dsn: str, service: str) -> tuple[int, int]:
    """Rows stored for ``service``, and how many distinct spans they are."""
    [(total, distinct)] = query(
        dsn,
        "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM tokentrace.spans "
        "WHERE service_name = %s",
        (service,),
    )
    return int(total), int(distinct)


def grpc_stream(service: str, seconds: int, rate: int, port: int) -> dict[str, Any]:
    """A sender config: the official OTLP/gRPC exporter streaming at a fixed rate."""
    return {
        "service": service,
        "mode": "stream",
        "count": seconds * rate,
        "rate": rate,
        "targets": [{"protocol": "grpc", "endpoint": f"http://127.0.0.1:{port}", "timeout": 30}],
    }


def exporter_retries(log: str) -> int:
    """How often the official exporter logged a retry after ``UNAVAILABLE``."""
    return len(re.findall(r"StatusCode\.UNAVAILABLE.*retrying", log))


def delivery(report: dict[str, int], stored: int, distinct: int) -> dict[str, int]:
    """The figures every fault test reports about what was sent and what arrived."""
    return {
        "sent": report["sent"],
        "acknowledged": report["ok_spans"],
        "failed_batches": report["failed_batches"],
        "stored": stored,
        "distinct": distinct,
        "duplicates": stored - distinct,
        "lost": report["sent"] - distinct,
    }


def assert_each_span_stored_once(report: dict[str, int], stored: int, distinct: int, count: int) -> None:
    assert report == {"sent": count, "ok_spans": count, "failed_batches": 0}
    assert (stored, distinct) == (count, count)
