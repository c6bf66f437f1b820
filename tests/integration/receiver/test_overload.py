"""Too many requests in progress: "retry later" on both protocols, then back to normal.

A request is held in progress for real: another session locks ``tokentrace.spans``,
so the receiver's COPY waits on PostgreSQL's lock until the test lets go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import psycopg
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from tests.helpers import query
from tests.integration.receiver.clients import Http, HttpResult, grpc_export, valid_request
from tests.integration.receiver.conftest import StartReceiver


@contextmanager
def spans_locked(dsn: str) -> Iterator[None]:
    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE tokentrace.spans IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def wait_for_lock_waiter(dsn: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tokentrace' AND wait_event_type = 'Lock'"
    while query(dsn, sql)[0][0] == 0:
        assert time.monotonic() < deadline, "the held request never reached the database"
        time.sleep(0.02)


def test_overload_is_429_and_resource_exhausted_with_retry_info(
    start_receiver: StartReceiver, db: str
) -> None:
    receiver = start_receiver(max_inflight=1)
    held: list[HttpResult] = []
    with spans_locked(db):
        holder = Http(receiver.http_port)
        thread = threading.Thread(
            target=lambda: held.append(holder.post(valid_request(3, salt=21)))
        )
        thread.start()
        wait_for_lock_waiter(db)

        client = Http(receiver.http_port)
        refused = client.post(valid_request(2, salt=22))
        assert refused.status == 429
        assert refused.headers["retry-after"] == "1"
        assert "too many export requests in progress" in Status.FromString(refused.body).message

        call = grpc_export(receiver.grpc_port, valid_request(2, salt=23))
        assert call.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert RetryInfo.FromString(
            call.trailers["google.rpc.retryinfo-bin"]
        ).retry_delay == Duration(seconds=1)
        detail = Status.FromString(call.trailers["grpc-status-details-bin"]).details[0]
        assert detail.type_url.endswith("google.rpc.RetryInfo")
    thread.join(timeout=30)
    holder.close()
    assert held[0].status == 200  # the held request committed once the lock was gone
    assert client.post(valid_request(2, salt=22)).status == 200
    client.close()
    assert grpc_export(receiver.grpc_port, valid_request(2, salt=23)).code == grpc.StatusCode.OK
    assert query(db, "SELECT count(*) FROM tokentrace.spans")[0][0] == 7
