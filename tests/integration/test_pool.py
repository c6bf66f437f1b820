"""Report connections kept between requests (tokentrace.store.pool), on a real PostgreSQL:
reused while healthy, replaced when broken, never handed out mid-transaction."""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import psycopg
import pytest

from tests.helpers import query
from tokentrace import reports
from tokentrace.store.pool import ConnectionPool


def _pid(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]


def _terminate(dsn: str, pid: int) -> None:
    [(done,)] = query(dsn, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
    assert done is True


def test_a_kept_connection_is_reused_with_its_report_settings(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENTRACE_REPORT_TIMEOUT_MS", "4321")
    pool = reports.report_pool(db)
    try:
        first = pool.run(_pid)
        assert pool.idle == 1
        assert pool.run(_pid) == first
        settings = pool.run(
            lambda c: c.execute(
                "SELECT current_setting('statement_timeout'),"
                " current_setting('default_transaction_read_only')"
            ).fetchone()
        )
        assert settings == ("4321ms", "on")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            pool.run(lambda c: c.execute("CREATE TABLE public.pool_should_not_exist (x int)"))
        assert pool.run(_pid) == first  # an error in the work leaves the connection usable
    finally:
        pool.close()
    assert pool.idle == 0


def test_a_connection_that_broke_while_kept_is_replaced(db: str) -> None:
    pool = reports.report_pool(db)
    try:
        # Two kept connections, then both backends killed (as a server restart would).
        pids: list[int] = []
        pool.run(lambda c: pids.extend((_pid(c), pool.run(_pid))))
        assert pool.idle == 2
        for pid in pids:
            _terminate(db, pid)
        calls: list[int] = []

        def work(conn: psycopg.Connection[Any]) -> int:
            calls.append(1)
            return _pid(conn)

        fresh = pool.run(work)
        assert fresh not in pids
        assert len(calls) == 2  # once on the dead connection, once on a new one
        assert pool.idle == 1  # the other dead one was dropped, not kept
        assert pool.run(_pid) == fresh
    finally:
        pool.close()


def test_an_error_that_is_not_a_broken_kept_connection_is_not_retried(db: str) -> None:
    pool = reports.report_pool(db)
    calls: list[int] = []

    def work(conn: psycopg.Connection[Any]) -> None:
        calls.append(1)
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    try:
        with pytest.raises(psycopg.OperationalError):
            pool.run(work)  # a new connection, dying during its work: raised as it is
        assert calls == [1] and pool.idle == 0
    finally:
        pool.close()


def test_a_connection_left_in_a_transaction_is_not_kept(db: str) -> None:
    pool = reports.report_pool(db)
    try:
        pid = pool.run(lambda c: (c.execute("BEGIN"), _pid(c))[1])
        assert pool.idle == 0
        assert pool.run(_pid) != pid
        [(count,)] = query(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        assert count == 0  # closed, not leaked
    finally:
        pool.close()


def test_at_most_max_idle_kept_and_none_after_max_idle_s(db: str) -> None:
    pool = ConnectionPool(lambda: reports.open_report_connection(db), max_idle=2)
    try:
        # Three at once: a new one for each; two kept afterwards.
        pool.run(lambda a: pool.run(lambda b: pool.run(lambda c: None)))
        assert pool.idle == 2
    finally:
        pool.close()
    stale = ConnectionPool(lambda: reports.open_report_connection(db), max_idle_s=0)
    try:
        first = stale.run(_pid)
        assert stale.run(_pid) != first  # waited too long (any time at all): replaced
        [(count,)] = query(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,))
        assert count == 0
    finally:
        stale.close()


def test_threads_never_share_a_connection(db: str) -> None:
    pool = reports.report_pool(db)
    in_use: set[int] = set()
    clash: list[int] = []
    lock = threading.Lock()

    def work(conn: psycopg.Connection[Any]) -> None:
        pid = _pid(conn)
        with lock:
            if pid in in_use:
                clash.append(pid)
            in_use.add(pid)
        conn.execute("SELECT pg_sleep(0.01)")
        with lock:
            in_use.discard(pid)

    def client() -> None:
        for _ in range(10):
            pool.run(work)

    threads = [threading.Thread(target=client) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert clash == [] and 1 <= pool.idle <= 4
    finally:
        pool.close()


def test_after_close_nothing_is_kept(db: str) -> None:
    pool = reports.report_pool(db)
    kept: list[psycopg.Connection[Any]] = []
    pool.run(kept.append)
    pool.close()
    assert kept[0].closed and pool.idle == 0
    assert pool.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)  # still answers
    assert pool.idle == 0


def test_a_forked_child_leaves_the_parents_connection_alone(db: str) -> None:
    pool = reports.report_pool(db)
    try:
        parent_pid = pool.run(_pid)
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads about
            child = os.fork()
        if child == 0:  # the child: its own connection, the parent's kept one untouched
            try:
                os.write(write, str(pool.run(_pid)).encode())
                pool.close()
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child_backend = int(pipe.read())
        os.waitpid(child, 0)
        assert child_backend != parent_pid
        assert pool.run(_pid) == parent_pid  # still alive: the child did not end it
    finally:
        pool.close()
