"""Fault tests: the figures each one measured are printed at the end of the run.

(Run ``pytest tests/faults`` to see them in the terminal summary; they are also
attached to each test's report as user properties, for JUnit XML.)
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

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
