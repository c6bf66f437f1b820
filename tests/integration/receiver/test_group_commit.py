"""Group commit: concurrent requests share one COPY + commit, and each keeps its own answer.

Requests are made to wait together for real: another session locks
``tokentrace.spans``, so the writes in progress (``EAGER_WRITES`` start at once)
block on PostgreSQL's lock while the next requests queue up behind them; once the
lock goes, those are written as one group. A row PostgreSQL refuses is made with a real ``CHECK`` constraint; a
database failure is a real ``pg_terminate_backend`` of the receiver's connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.helpers import query
from tests.integration.receiver.clients import (
    Http,
    grpc_export,
    pb_request,
    pb_span,
    span_ids,
    valid_request,
)
from tests.integration.receiver.conftest import StartReceiver
from tokentrace.receiver.decode import decode_protobuf
from tokentrace.receiver.group_commit import EAGER_WRITES, GroupCommitter
from tokentrace.receiver.ingest import build_rows
from tokentrace.receiver.server import Receiver
from tokentrace.store.writer import SpanWriter

REFUSED_MODEL = "refused-by-check"
_WAITING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name = 'tokentrace' AND wait_event_type = 'Lock'"
)


@contextmanager
def spans_locked(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE tokentrace.spans IN ACCESS EXCLUSIVE MODE")
        yield conn
        conn.rollback()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lock_waiters(dsn: str) -> int:
    return int(query(dsn, _WAITING)[0][0])


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    return thread, out


def http_post(port: int, body: bytes) -> tuple[int, bytes]:
    client = Http(port)
    try:
        result = client.post(body)
    finally:
        client.close()
    return result.status, result.body


def rejected(response: bytes) -> tuple[int, str]:
    partial = ExportTraceServiceResponse.FromString(response).partial_success
    return partial.rejected_spans, partial.error_message


def count(dsn: str) -> tuple[int, int]:
    row = query(
        dsn, "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM tokentrace.spans"
    )[0]
    return int(row[0]), int(row[1])


HELD_SALTS = range(60, 60 + EAGER_WRITES)


def hold_writes(receiver: Receiver, dsn: str) -> list[tuple[threading.Thread, list[Any]]]:
    """Requests whose writes are in progress (blocked on the lock), so later ones queue."""
    held = []
    for salt in HELD_SALTS:
        body = valid_request(2, salt)
        held.append(in_background(lambda body=body: http_post(receiver.http_port, body)))
        wait_until(lambda: lock_waiters(dsn) == len(held), "a write to wait on the lock")
    return held


def join_held(held: list[tuple[threading.Thread, list[Any]]]) -> list[int]:
    """The HTTP statuses the held requests got."""
    for thread, _ in held:
        thread.join(timeout=30)
    return [out[0][0] for _, out in held]


def wait_queued(receiver: Receiver, requests: int) -> None:
    committer = receiver.ingestor.committer
    wait_until(lambda: committer.pending_requests == requests, f"{requests} queued requests")


@pytest.fixture
def refusing_db(db: str) -> Iterator[str]:
    """The test database with a CHECK constraint that refuses one model's rows."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE tokentrace.spans ADD CONSTRAINT test_refused_model "
            f"CHECK (model IS DISTINCT FROM '{REFUSED_MODEL}')"
        )
    yield db
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE tokentrace.spans DROP CONSTRAINT IF EXISTS test_refused_model")


def test_requests_in_one_group_each_get_their_own_rejected_spans(
    start_receiver: StartReceiver, refusing_db: str
) -> None:
    receiver = start_receiver()
    ids_b, ids_c = span_ids(3, salt=71), span_ids(2, salt=72)
    body_b = pb_request(
        [pb_span(t, s, model=REFUSED_MODEL if i == 1 else "m") for i, (t, s) in enumerate(ids_b)]
    )
    body_c = pb_request(
        [pb_span(t, s, model=REFUSED_MODEL if i == 0 else "m") for i, (t, s) in enumerate(ids_c)]
    )
    with spans_locked(refusing_db):
        held = hold_writes(receiver, refusing_db)
        groups_before = receiver.ingestor.committer.groups_written
        via_grpc, grpc_out = in_background(lambda: grpc_export(receiver.grpc_port, body_b))
        via_http, http_out = in_background(lambda: http_post(receiver.http_port, body_c))
        wait_queued(receiver, 2)
    assert join_held(held) == [200] * EAGER_WRITES
    via_grpc.join(timeout=30)
    via_http.join(timeout=30)
    # Both queued requests went in one write.
    assert receiver.ingestor.committer.groups_written == groups_before + 1

    [b] = grpc_out
    assert b.code == grpc.StatusCode.OK and b.response is not None
    b_count, b_message = rejected(b.response)
    assert b_count == 1 and f"{ids_b[1][1].hex()}: refused by PostgreSQL" in b_message
    assert "test_refused_model" in b_message and ids_c[0][1].hex() not in b_message

    [(c_status, c_body)] = http_out
    c_count, c_message = rejected(c_body)
    assert c_status == 200 and c_count == 1 and f"{ids_c[0][1].hex()}: refused" in c_message
    assert ids_b[1][1].hex() not in c_message

    stored = {row[0] for row in query(refusing_db, "SELECT span_id FROM tokentrace.spans")}
    assert stored >= {ids_b[0][1], ids_b[2][1], ids_c[1][1]}
    assert not stored & {ids_b[1][1], ids_c[0][1]}
    assert count(refusing_db) == (2 * EAGER_WRITES + 3,) * 2  # the held + 2 of b + 1 of c


def test_the_same_request_twice_in_one_group_and_again_later_is_stored_once(
    start_receiver: StartReceiver, db: str
) -> None:
    receiver = start_receiver()
    body = valid_request(4, salt=73)
    with spans_locked(db):
        held = hold_writes(receiver, db)
        groups_before = receiver.ingestor.committer.groups_written
        first, first_out = in_background(lambda: grpc_export(receiver.grpc_port, body))
        second, second_out = in_background(lambda: http_post(receiver.http_port, body))
        wait_queued(receiver, 2)
    assert join_held(held) == [200] * EAGER_WRITES
    first.join(timeout=30)
    second.join(timeout=30)
    assert receiver.ingestor.committer.groups_written == groups_before + 1
    assert first_out[0].code == grpc.StatusCode.OK and rejected(first_out[0].response) == (0, "")
    assert second_out[0][0] == 200 and rejected(second_out[0][1]) == (0, "")
    expected = (2 * EAGER_WRITES + 4,) * 2
    assert count(db) == expected
    assert http_post(receiver.http_port, body)[0] == 200  # a later retry
    assert count(db) == expected


def _terminate_lock_waiters(dsn: str) -> None:
    query(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'tokentrace' AND wait_event_type = 'Lock'",
    )


def test_a_failed_group_write_is_unavailable_for_every_request_in_it(
    start_receiver: StartReceiver, db: str
) -> None:
    receiver = start_receiver()
    body_b, body_c = valid_request(3, salt=74), valid_request(2, salt=75)
    with spans_locked(db):
        held = hold_writes(receiver, db)
        via_grpc, grpc_out = in_background(lambda: grpc_export(receiver.grpc_port, body_b))
        via_http, http_out = in_background(lambda: http_post(receiver.http_port, body_c))
        wait_queued(receiver, 2)
        _terminate_lock_waiters(db)  # the held writes' connections die
        assert join_held(held) == [503] * EAGER_WRITES
        # Then the group of the two queued requests is written, and waits on the lock.
        wait_until(lambda: receiver.ingestor.committer.pending_requests == 0, "the next group")
        wait_until(lambda: lock_waiters(db) == 1, "the group's write to wait on the lock")
        _terminate_lock_waiters(db)
        via_grpc.join(timeout=30)
        via_http.join(timeout=30)
    assert grpc_out[0].code == grpc.StatusCode.UNAVAILABLE
    assert "google.rpc.retryinfo-bin" in grpc_out[0].trailers
    assert http_out[0][0] == 503
    assert count(db) == (0, 0)  # nothing was acknowledged, and nothing half-stored
    # The clients retry: everything is stored, once.
    for salt in HELD_SALTS:
        assert http_post(receiver.http_port, valid_request(2, salt))[0] == 200
    assert grpc_export(receiver.grpc_port, body_b).code == grpc.StatusCode.OK
    assert http_post(receiver.http_port, body_c)[0] == 200
    assert count(db) == (2 * EAGER_WRITES + 5,) * 2


def test_a_full_group_waiting_starts_another_writer_and_groups_stay_bounded(db: str) -> None:
    threads_n = EAGER_WRITES + 1
    writer = SpanWriter(db, max_connections=threads_n)
    committer = GroupCommitter(writer.write_wire, threads=threads_n, max_rows=4)
    requests = [
        build_rows(decode_protobuf(valid_request(2, salt=80 + i)).spans, 65_536)[0]
        for i in range(EAGER_WRITES + 3)
    ]
    threads: list[tuple[threading.Thread, list[Any]]] = []

    def submit(i: int) -> None:
        threads.append(in_background(lambda: committer.write(requests[i])))

    try:
        with spans_locked(db):
            for i in range(EAGER_WRITES):  # written at once
                submit(i)
                wait_until(lambda: lock_waiters(db) == i + 1, f"write {i + 1}")
            submit(EAGER_WRITES)
            wait_until(lambda: committer.pending_requests == 1, "a request to queue")
            submit(EAGER_WRITES + 1)  # 4 rows waiting = a full group: another writer takes it
            wait_until(lambda: lock_waiters(db) == threads_n, "one more write")
            assert committer.pending_requests == 0
            submit(EAGER_WRITES + 2)  # every writer busy: it waits
            wait_until(lambda: committer.pending_requests == 1, "the last request to queue")
        for thread, _ in threads:
            thread.join(timeout=30)
        assert [out[0].error for _, out in threads] == [None] * len(requests)
        # Each held request alone, the full group of two, the last one.
        assert committer.groups_written == EAGER_WRITES + 2
        assert count(db) == (2 * len(requests),) * 2
    finally:
        committer.close()
        writer.close()
