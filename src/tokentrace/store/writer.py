"""The one place spans are written: COPY, one transaction per batch, idempotent.

A batch is bulk-loaded with binary ``COPY`` straight into ``tokentrace.spans``. If
any span of it is already stored (a batch retried after a timeout), the transaction
is rolled back and the batch goes through a temporary staging table with
``INSERT … ON CONFLICT DO NOTHING``, so each span is stored once: a span's identity
is ``(trace_id, span_id)`` (with its ``start_time``, which a retry resends as is).

The day partitions a batch needs are created first, in their own short transaction.

On a Citus cluster (:mod:`tokentrace.store.citus`) no trigger rolls the spans up, so a
batch is COPYed into a temporary table on the coordinator, inserted from there (``ON
CONFLICT DO NOTHING RETURNING`` on the careful path, keeping only the rows actually
inserted) and rolled up by ``tokentrace.rollup_staged()`` in the same transaction. A
distributed deadlock between receivers (Citus aborts one of them) is retried.

A row PostgreSQL refuses (it should not happen after :mod:`tokentrace.store.rows`
sanitized it, but the database has the last word) does not sink its batch: the batch
is split and retried until the refused rows are isolated; they are reported in
:attr:`WriteResult.rejected` and everything else is stored.

Connection errors are raised to the caller (the exporter turns them into
``FAILURE``, the receiver into ``UNAVAILABLE``); the broken connection is dropped
and a fresh one is opened on the next write.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import Copy
from psycopg.types.string import BytesBinaryDumper

from tokentrace.store import citus
from tokentrace.store.connection import connect
from tokentrace.store.errors import describe
from tokentrace.store.migrate import migrate_if_needed
from tokentrace.store.rows import COLUMN_TYPES, COLUMNS, BuiltRow, WireRow, wire_rows

_log = logging.getLogger(__name__)
_COLUMN_LIST = ", ".join(COLUMNS)
_COPY_SPANS = f"COPY tokentrace.spans ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
_COPY_STAGING = f"COPY tt_staging ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS tt_staging "
    "(LIKE tokentrace.spans INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MERGE_STAGING = (
    f"INSERT INTO tokentrace.spans ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM tt_staging ORDER BY start_time, trace_id, span_id "
    "ON CONFLICT DO NOTHING"
)
# The two jsonb columns are the last two and a wire row carries them already encoded
# (tokentrace.store.rows.wire_row), so they go through the bytes dumper.
# The Citus path (see the module docstring): staged rows, then rollup_staged() over them.
_COPY_INSERTED = f"COPY {citus.INSERTED} ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
# Citus reports a duplicate key met by an INSERT … SELECT as an internal error (XX000),
# not a unique violation, and its row count as the rows selected: the fast path skips
# conflicts and counts the rows it RETURNS, which are the rows inserted.
_INSERT_STAGED = (
    f"WITH ins AS (INSERT INTO tokentrace.spans ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM {citus.INSERTED} ON CONFLICT DO NOTHING RETURNING 1) "
    "SELECT count(*) FROM ins"
)
_MERGE_RETURNING = (
    f"WITH ins AS (INSERT INTO tokentrace.spans ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM tt_staging ORDER BY start_time, trace_id, span_id "
    f"ON CONFLICT DO NOTHING RETURNING {_COLUMN_LIST}) "
    f"INSERT INTO {citus.INSERTED} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM ins"
)
_ROLLUP_STAGED = f"SELECT {citus.ROLLUP_FUNCTION}"
_DEADLOCK_RETRIES = 5
_ATTRIBUTES, _RESOURCE = COLUMNS.index("attributes"), COLUMNS.index("resource")
assert (_ATTRIBUTES, _RESOURCE) == (len(COLUMNS) - 2, len(COLUMNS) - 1)
assert COLUMN_TYPES[_ATTRIBUTES] == COLUMN_TYPES[_RESOURCE] == "jsonb"
_WIRE_TYPES = [*COLUMN_TYPES[:_ATTRIBUTES], "bytea", "bytea"]
_START, _TRACE_ID, _SPAN_ID, _NAME = (COLUMNS.index(c) for c in ("start_time", "trace_id", "span_id", "name"))

Conn = psycopg.Connection[tuple[Any, ...]]


class _SomeStored(Exception):
    """Some spans of a batch are stored already (the Citus fast path found fewer new)."""


class _PartitionGone(Exception):
    """A row's day partition no longer exists (dropped after we created it)."""


@dataclass
class WriteResult:
    """What happened to one batch."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


class SpanWriter:
    """Writes batches of built rows to one database; safe to share between threads."""

    def __init__(self, dsn: str, *, max_connections: int = 4, auto_migrate: bool = True) -> None:
        self._dsn = dsn
        self._auto_migrate = auto_migrate
        self._migrated = False
        self._idle: queue.LifoQueue[Conn] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._days_lock = threading.Lock()
        self._known_days: set[dt.date] = set()
        self._closed = False
        self._distributed: bool | None = None  # known at the first connection

    # --- connections -------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        self._slots.acquire()
        try:
            conn = self._checkout()
            try:
                yield conn
            except BaseException:
                conn.close()  # its state is unknown: never reuse it
                raise
            if self._closed:
                conn.close()
            else:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def _checkout(self) -> Conn:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            if not conn.closed:
                return conn
        self._ensure_schema()
        conn = connect(self._dsn)
        if self._distributed is None:
            self._distributed = citus.is_distributed(conn)
        if self._distributed:
            citus.create_write_tables(conn)
        else:
            conn.execute(_CREATE_STAGING)
        conn.commit()
        return conn

    @property
    def distributed(self) -> bool | None:
        """Whether the database is a Citus cluster (``None`` before the first write)."""
        return self._distributed

    def _ensure_schema(self) -> None:
        if self._migrated or not self._auto_migrate:
            return
        migrate_if_needed(self._dsn)
        self._migrated = True

    def close(self) -> None:
        """Close idle connections; connections in use close when returned."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    # --- writing -----------------------------------------------------------------
    def write(self, rows: Sequence[BuiltRow]) -> WriteResult:
        """Store ``rows`` (each at most once); raises on connection failure."""
        return self.write_wire(wire_rows(rows))

    def write_wire(self, rows: Sequence[WireRow]) -> WriteResult:
        """:meth:`write` for rows already made by :func:`~tokentrace.store.rows.wire_row`.

        ``WriteResult.rejected`` indexes into ``rows``.
        """
        if not rows:
            return WriteResult()
        with self._connection() as conn:
            self._ensure_partitions(conn, {row[_START].date() for row in rows})
            return self._write_all(conn, rows)

    def write_ordered(
        self, rows: Iterable[WireRow], days: Collection[dt.date]
    ) -> tuple[WriteResult, list[WireRow]]:
        """Store rows produced lazily in key order, each sent as soon as it is made.

        PostgreSQL then stores the first rows of a batch while the caller is still
        building the rest, instead of the two taking turns. ``rows`` must come in
        the writer's key order (``start_time``, ``trace_id``, ``span_id``) and
        ``days`` must hold the UTC day of each. Returns the result and the rows
        written, which ``WriteResult.rejected`` indexes into.
        """
        pending = iter(rows)
        written: list[WireRow] = []
        with self._connection() as conn:
            self._ensure_partitions(conn, days)
            try:
                if self._distributed:
                    _copy(conn, _COPY_INSERTED, pending, written.append)
                    if _count(conn, _INSERT_STAGED) != len(written):
                        raise _SomeStored
                    conn.execute(_ROLLUP_STAGED)
                else:
                    _copy(conn, _COPY_SPANS, pending, written.append)
                conn.commit()
            except (*_REFUSALS, psycopg.errors.TransactionRollback, _SomeStored):
                # A duplicate or a refused row: take the careful path with all the rows.
                conn.rollback()
                written.extend(pending)
                return self._write_all(conn, written), written
        return WriteResult(received=len(written), inserted=len(written)), written

    def _write_all(self, conn: Conn, rows: Sequence[WireRow]) -> WriteResult:
        result = WriteResult(received=len(rows))
        try:
            self._write_isolating(conn, _in_key_order(rows), result)
        except _PartitionGone:
            # A day we knew was dropped meanwhile (prune): recreate it and retry once.
            conn.rollback()
            result = WriteResult(received=len(rows))
            with self._days_lock:
                self._known_days.clear()
            self._ensure_partitions(conn, {row[_START].date() for row in rows})
            self._write_isolating(conn, _in_key_order(rows), result)
        result.duplicates = result.received - result.inserted - len(result.rejected)
        return result

    def _ensure_partitions(self, conn: Conn, days: Collection[dt.date]) -> None:
        with self._days_lock:
            missing = sorted(set(days) - self._known_days)
        if not missing:
            return
        conn.execute("SELECT tokentrace.ensure_partitions(%s::date[])", (missing,))
        conn.commit()
        with self._days_lock:
            self._known_days.update(missing)

    def _write_isolating(
        self, conn: Conn, batch: list[tuple[int, WireRow]], result: WriteResult
    ) -> None:
        try:
            result.inserted += self._write_batch(conn, [row for _, row in batch])
        except _REFUSALS as exc:
            conn.rollback()
            if "no partition of relation" in str(exc):
                raise _PartitionGone from exc
            if len(batch) == 1:
                index, _ = batch[0]
                result.rejected.append((index, describe(exc)))
                return
            middle = len(batch) // 2
            self._write_isolating(conn, batch[:middle], result)
            self._write_isolating(conn, batch[middle:], result)

    def _write_batch(self, conn: Conn, rows: Sequence[WireRow]) -> int:
        if self._distributed:
            return self._write_batch_distributed(conn, rows)
        try:
            _copy(conn, _COPY_SPANS, rows)
            conn.commit()
            return len(rows)
        except psycopg.errors.UniqueViolation:
            conn.rollback()
        # Some spans are stored already: merge through staging, skipping those.
        _copy(conn, _COPY_STAGING, rows)
        inserted = conn.execute(_MERGE_STAGING).rowcount
        conn.commit()
        return max(inserted, 0)

    def _write_batch_distributed(self, conn: Conn, rows: Sequence[WireRow]) -> int:
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                return self._write_batch_staged(conn, rows)
            except psycopg.errors.TransactionRollback:
                # A distributed deadlock (or serialization failure) Citus broke by
                # aborting us: nothing of the batch was kept, so it is safe to redo.
                conn.rollback()
                if attempt == _DEADLOCK_RETRIES:
                    raise
                _log.info("batch aborted by the cluster (attempt %d), retrying", attempt + 1)
        raise AssertionError("unreachable")

    def _write_batch_staged(self, conn: Conn, rows: Sequence[WireRow]) -> int:
        _copy(conn, _COPY_INSERTED, rows)
        if _count(conn, _INSERT_STAGED) == len(rows):
            conn.execute(_ROLLUP_STAGED)
            conn.commit()
            return len(rows)
        conn.rollback()
        # Some spans are stored already: only the rows inserted now are rolled up.
        _copy(conn, _COPY_STAGING, rows)
        conn.execute(_MERGE_RETURNING)
        inserted = _count(conn, f"SELECT count(*) FROM {citus.INSERTED}")
        conn.execute(_ROLLUP_STAGED)
        conn.commit()
        return max(inserted, 0)


# What PostgreSQL answers to rows it will not take (duplicates included: IntegrityError).
_REFUSALS = (psycopg.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded)


def _count(conn: Conn, statement: str) -> int:
    row = conn.execute(statement).fetchone()
    return int(row[0]) if row else 0


def _in_key_order(rows: Sequence[WireRow]) -> list[tuple[int, WireRow]]:
    # Writers that insert overlapping batches (the same spans retried to two receivers)
    # take the key locks in the same order, so they wait on each other instead of
    # deadlocking.
    return sorted(enumerate(rows), key=lambda item: (item[1][_START], item[1][_TRACE_ID], item[1][_SPAN_ID]))


def _copy(
    conn: Conn,
    statement: str,
    rows: Iterable[WireRow],
    keep: Callable[[WireRow], None] | None = None,
) -> None:
    """COPY ``rows``; ``keep`` is called with each row just before it is sent."""
    with conn.cursor() as cur:
        # For bytea, psycopg's default dumper by type is a Python one (it also accepts
        # the DB-API ``Binary`` wrapper); plain bytes are all we send, so the C one does.
        cur.adapters.register_dumper(bytes, BytesBinaryDumper)
        with cur.copy(statement) as copy:
            copy.set_types(_WIRE_TYPES)
            _send(copy, rows, keep)


def _send(copy: Copy, rows: Iterable[WireRow], keep: Callable[[WireRow], None] | None) -> None:
    # ``Copy.write_row(row)`` is ``formatter.write_row(row)`` (which returns a full
    # buffer now and then) plus a write of that buffer. Calling the formatter here
    # saves a Python call per row; the buffers go through the public ``Copy.write``,
    # which in binary format passes them on unchanged.
    formatter = getattr(copy, "formatter", None)
    if not callable(getattr(formatter, "write_row", None)):  # another psycopg: the public way
        for row in rows:
            if keep is not None:
                keep(row)
            copy.write_row(row)
        return
    write_row, write = formatter.write_row, copy.write  # type: ignore[union-attr]
    if keep is None:
        for row in rows:
            if data := write_row(row):
                write(data)
    else:
        for row in rows:
            keep(row)
            if data := write_row(row):
                write(data)


def row_name(row: WireRow) -> str:
    """The span name of a wire row (for log lines about it)."""
    name: str = row[_NAME]
    return name
