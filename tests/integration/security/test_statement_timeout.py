"""Report queries run with a statement timeout (``TOKENTRACE_REPORT_TIMEOUT_MS``):
a report that cannot finish is cancelled by PostgreSQL, not left holding a connection."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from tests.integration.receiver.clients import Http
from tests.integration.receiver.conftest import StartReceiver
from tokentrace import reports

TIMEOUT_MS = 300


@contextmanager
def tables_locked(dsn: str) -> Iterator[None]:
    """Hold ACCESS EXCLUSIVE locks on the tables the reports read, until the block ends."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "LOCK TABLE tokentrace.spans, tokentrace.span_rollups IN ACCESS EXCLUSIVE MODE"
        )
        try:
            yield
        finally:
            conn.rollback()


def test_a_slow_report_query_is_cancelled(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENTRACE_REPORT_TIMEOUT_MS", str(TIMEOUT_MS))
    with reports.report_connection(db) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == (f"{TIMEOUT_MS}ms",)
        began = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - began < 5


def test_a_timeout_of_one_millisecond_cancels_a_real_report(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENTRACE_REPORT_TIMEOUT_MS", "1")
    # The footprint sizes every relation: far more than 1 ms of work. (On a busy machine
    # even the connection's own SET may be cancelled: that counts too.)
    with pytest.raises(psycopg.errors.QueryCanceled), reports.report_connection(db) as conn:
        for _ in range(20):
            reports.footprint(conn, exact=True)


@pytest.mark.parametrize("report", ["efficiency", "sixty_day", "footprint"])
def test_reports_blocked_by_a_lock_are_cancelled(
    db: str, monkeypatch: pytest.MonkeyPatch, report: str
) -> None:
    monkeypatch.setenv("TOKENTRACE_REPORT_TIMEOUT_MS", str(TIMEOUT_MS))
    with tables_locked(db), reports.report_connection(db) as conn:
        began = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            getattr(reports, report)(conn)
        assert time.monotonic() - began < 5


def test_the_http_reports_answer_503_when_cancelled(
    db: str, start_receiver: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENTRACE_REPORT_TIMEOUT_MS", str(TIMEOUT_MS))
    receiver = start_receiver()
    http = Http(receiver.http_port)
    try:
        with tables_locked(db):
            for path in ("/telemetry/efficiency", "/telemetry/60day", "/telemetry/footprint"):
                began = time.monotonic()
                result = http.get(path)
                assert result.status == 503, (path, result.status, result.body)
                assert time.monotonic() - began < 5
        assert http.get("/telemetry/efficiency").status == 200  # the lock gone, it answers
    finally:
        http.close()


def test_the_cli_report_gives_up_at_the_timeout(db: str, subprocess_env: dict[str, str]) -> None:
    env = dict(subprocess_env, TOKENTRACE_REPORT_TIMEOUT_MS=str(TIMEOUT_MS))
    ready = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with tables_locked(db):
            ready.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "tokentrace", "report", "efficiency", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - began
    finally:
        release.set()
        holder.join(timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "statement timeout" in done.stderr
    assert elapsed < 30


def test_the_dashboard_says_its_reports_timed_out(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cancelled query is an OperationalError too, but the server answered: the page
    # says the reports took too long, not that the database cannot be reached.
    from tokentrace.dashboard import handle_dashboard

    monkeypatch.setenv("TOKENTRACE_REPORT_TIMEOUT_MS", str(TIMEOUT_MS))
    with tables_locked(db):
        status, headers, body = handle_dashboard("", db)
    assert status == 503 and headers["Retry-After"] == "10"
    assert "Reports timed out" in body.decode() and "cannot be reached" not in body.decode()
