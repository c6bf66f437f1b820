"""Connections kept open between requests, so a report skips connecting and warming up.

A report on a new connection pays for more than the connection: the new server
session builds its catalog caches and the report functions' plans on first use. On
a 1 M-span store, ``efficiency('24 hours')`` takes ~20 ms as a session's first query
and ~3.5 ms after that. ``tokentrace serve`` therefore keeps the connections of
finished report requests (``/telemetry/…`` and the dashboard) for the next ones.

A kept connection is handed out again only if it came back idle (no transaction
left open) and not broken, and only for ``max_idle_s`` after it was last used. One
that broke while it waited (the server restarted, an idle timeout ended its session)
fails on its first statement: :meth:`ConnectionPool.run` then closes every kept
connection and runs the work once more on a new one, which is safe because the work
it is given only reads.

After a ``fork()`` the child never uses (nor closes) the connections it inherited:
they are the parent's sessions, and closing one would end it for the parent too.

Why not ``psycopg_pool``: it runs worker threads for each pool and makes a request
wait when ``max_size`` connections are busy; reports were never capped like that,
and a pool per ``compat.Telemetry`` object should not start threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from tokentrace.store.errors import UNAVAILABLE

T = TypeVar("T")
Connection = psycopg.Connection[Any]

# Connections a forked child inherited, held so that they are never finalized (which
# would send the server a Terminate for the parent's session).
_INHERITED: list[Connection] = []


class ConnectionPool:
    """Up to ``max_idle`` idle connections from ``open_connection``, reused LIFO.

    ``open_connection`` returns a connection ready for the work (session settings
    applied). No connection is opened before the first :meth:`run`; none is ever
    waited for: when all kept ones are in use, a new one is opened.
    """

    def __init__(
        self,
        open_connection: Callable[[], Connection],
        *,
        max_idle: int = 4,
        max_idle_s: float = 300.0,
    ) -> None:
        self._open = open_connection
        self._max_idle = max_idle
        self._max_idle_s = max_idle_s
        self._idle: list[tuple[float, Connection]] = []  # (when it came back, connection)
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    @property
    def idle(self) -> int:
        """How many connections are kept, waiting for work."""
        with self._lock:
            return len(self._idle)

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` on a kept connection or a new one; its result.

        ``work`` must only read: if a kept connection turns out to be broken, it runs
        again on a new one. Exceptions from ``work`` (or from connecting) propagate.
        """
        conn = self._take()
        if conn is not None:
            try:
                return self._work_on(conn, work)
            except UNAVAILABLE:
                if not conn.broken:
                    raise
                # It broke while kept (a server restart, an idle timeout); so, most
                # likely, did the others.
                self.clear()
        return self._work_on(self._open(), work)

    def clear(self) -> None:
        """Close the connections kept so far (the pool stays usable)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()

    def close(self) -> None:
        """Close the kept connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
        self.clear()

    def _work_on(self, conn: Connection, work: Callable[[Connection], T]) -> T:
        try:
            return work(conn)
        finally:
            self._give_back(conn)

    def _take(self) -> Connection | None:
        """The most recently kept connection, if it is still fresh; else None.

        The kept ones are in the order they came back, so when the newest has waited
        too long, all have: they are closed.
        """
        expired: list[tuple[float, Connection]] = []
        with self._lock:
            if self._pid != os.getpid():
                _INHERITED.extend(conn for _, conn in self._idle)
                self._idle, self._pid = [], os.getpid()
            if not self._idle:
                return None
            if self._idle[-1][0] >= time.monotonic() - self._max_idle_s:
                return self._idle.pop()[1]
            expired, self._idle = self._idle, []
        for _, conn in expired:
            conn.close()
        return None

    def _give_back(self, conn: Connection) -> None:
        reusable = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
        with self._lock:
            if reusable and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()
