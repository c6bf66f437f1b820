"""OTLP/HTTP ingestion and the HTTP reports, against a real receiver and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import socket
import time
from collections.abc import Iterator

import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.helpers import query
from tests.integration.original_shapes import assert_footprint, assert_statistics
from tests.integration.receiver.clients import Http, pb_request, pb_span, span_ids, valid_request
from tests.integration.receiver.conftest import StartReceiver
from tests.unit.receiver.test_decode import SPEC_EXAMPLE
from tokentrace import reports
from tokentrace.receiver.server import Receiver

PB = "application/x-protobuf"
JS = "application/json"


@pytest.fixture
def http(receiver: Receiver) -> Iterator[Http]:
    client = Http(receiver.http_port)
    yield client
    client.close()


def _count(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM tokentrace.spans")[0][0])


def _assert_still_serving(client: Http, dsn: str) -> None:
    """After an error, a valid request on the same connection is stored."""
    before = _count(dsn)
    result = client.post(valid_request(2, salt=int(time.time_ns() % 1_000_000)))
    assert result.status == 200, result.body
    assert _count(dsn) == before + 2


# --- success --------------------------------------------------------------------
def test_protobuf_spans_are_committed_before_the_answer(http: Http, db: str) -> None:
    ids = span_ids(3, salt=1)
    result = http.post(
        pb_request([pb_span(t, s, output_tokens=50, model="llama3.2") for t, s in ids])
    )
    assert result.status == 200
    assert result.headers["content-type"] == PB
    assert not ExportTraceServiceResponse.FromString(result.body).HasField("partial_success")
    rows = query(
        db,
        "SELECT trace_id, span_id, model, output_tokens, ms_per_token, duration_ms, service_name "
        "FROM tokentrace.spans ORDER BY span_id",
    )
    assert rows == [(t, s, "llama3.2", 50, 20.0, 1000.0, "svc") for t, s in ids]


def test_spec_example_json_is_stored_with_the_right_ids(http: Http, db: str) -> None:
    result = http.post(SPEC_EXAMPLE.encode(), JS)
    assert result.status == 200 and result.headers["content-type"] == JS
    assert result.json() == {}
    rows = query(
        db,
        "SELECT trace_id, span_id, parent_span_id, name, kind, service_name, start_time, "
        "duration_ms, attributes ->> 'my.span.attr' FROM tokentrace.spans",
    )
    [(trace_id, span_id, parent, name, kind, service, start, duration, attr)] = rows
    assert trace_id == bytes.fromhex("5B8EFFF798038103D269B633813FC60C")
    assert span_id == bytes.fromhex("EEE19B7EC3C1B174")
    assert parent == bytes.fromhex("EEE19B7EC3C1B173")
    assert (name, kind, service, duration, attr) == (
        "I'm a server span",
        "SERVER",
        "my.service",
        1000.0,
        "some value",
    )
    assert start.isoformat() == "2018-12-13T14:51:00+00:00"


@pytest.mark.parametrize(
    "content_type", [PB, JS, "application/json; charset=utf-8", "Application/X-Protobuf"]
)
def test_gzip_in_both_encodings(http: Http, db: str, content_type: str) -> None:
    if content_type.lower().startswith(JS):
        body = SPEC_EXAMPLE.encode()
    else:
        body = valid_request(4, salt=2)
    result = http.post(gzip.compress(body), content_type, Content_Encoding="gzip")
    assert result.status == 200, result.body
    assert _count(db) == (1 if content_type.lower().startswith(JS) else 4)


def test_chunked_body(receiver: Receiver, db: str) -> None:
    client = Http(receiver.http_port)
    body = valid_request(3, salt=3)
    client.conn.request(
        "POST",
        "/v1/traces",
        body=iter([body[:10], body[10:]]),
        headers={"Content-Type": PB},
        encode_chunked=True,
    )
    response = client.conn.getresponse()
    response.read()
    client.close()
    assert response.status == 200
    assert _count(db) == 3


def test_partial_success_protobuf(http: Http, db: str) -> None:
    (t1, s1), (t2, s2), (t3, _) = span_ids(3, salt=4)
    body = pb_request([pb_span(t1, s1), pb_span(t3, b"\x01\x02\x03\x04\x05"), pb_span(t2, s2)])
    result = http.post(body)
    assert result.status == 200
    partial = ExportTraceServiceResponse.FromString(result.body).partial_success
    assert partial.rejected_spans == 1
    assert partial.error_message == (
        f"1 of 3 spans rejected: span {t3.hex()}/0102030405: "
        "span_id must be 8 bytes, not all zero (got 5 bytes)"
    )
    assert sorted(r[0] for r in query(db, "SELECT span_id FROM tokentrace.spans")) == sorted(
        [s1, s2]
    )


def test_partial_success_json(http: Http, db: str) -> None:
    document = json.loads(SPEC_EXAMPLE)
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append(dict(spans[0], spanId="not-hex!"))
    spans.append(dict(spans[0], spanId="00000000000000aa"))
    result = http.post(json.dumps(document).encode(), JS)
    assert result.status == 200
    partial = result.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "spanId must be a hex string" in partial["errorMessage"]
    assert _count(db) == 2


def test_a_retried_request_stores_each_span_once(http: Http, db: str) -> None:
    body = valid_request(5, salt=5)
    for _ in range(3):
        assert http.post(body).status == 200
    assert _count(db) == 5
    assert query(db, "SELECT count(DISTINCT (trace_id, span_id)) FROM tokentrace.spans")[0][0] == 5


def test_empty_requests_succeed(http: Http, db: str) -> None:
    assert http.post(b"", PB).status == 200
    assert http.post(b"{}", JS).json() == {}
    assert _count(db) == 0


# --- client errors: each answered, and the next request still works --------------
@pytest.mark.parametrize(
    "body,content_type,message",
    [
        (b"\xff\xff\xff\xff garbage", PB, "not a protobuf ExportTraceServiceRequest"),
        (b"{not json", JS, "not valid JSON"),
        (b'{"resourceSpans": 5}', JS, "resourceSpans must be an array"),
    ],
)
def test_undecodable_body_is_400(
    http: Http, db: str, body: bytes, content_type: str, message: str
) -> None:
    result = http.post(body, content_type)
    assert result.status == 400
    assert result.headers["content-type"] == content_type
    status = Status.FromString(result.body) if content_type == PB else Status(**result.json())
    assert status.code == 3 and message in status.message
    _assert_still_serving(http, db)


def test_bad_gzip_is_400(http: Http, db: str) -> None:
    result = http.post(b"not gzip at all", PB, Content_Encoding="gzip")
    assert result.status == 400
    assert "not valid gzip" in Status.FromString(result.body).message
    _assert_still_serving(http, db)


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/grpc"])
def test_wrong_content_type_is_415(http: Http, db: str, content_type: str) -> None:
    result = http.post(valid_request(), content_type)
    assert result.status == 415
    assert (
        "Content-Type must be application/x-protobuf or application/json"
        in result.json()["message"]
    )
    _assert_still_serving(http, db)


def test_unknown_content_encoding_is_415(http: Http, db: str) -> None:
    result = http.post(valid_request(), PB, Content_Encoding="br")
    assert result.status == 415
    assert "unsupported Content-Encoding 'br'" in Status.FromString(result.body).message
    _assert_still_serving(http, db)


def test_body_over_the_limit_is_413_also_after_decompression(
    start_receiver: StartReceiver, db: str
) -> None:
    client = Http(start_receiver(http_max_request_bytes=64 * 1024).http_port)
    try:
        big = client.post(b"\x00" * (100 * 1024), PB)
        assert big.status == 413
        assert "over the 65536-byte limit" in Status.FromString(big.body).message
        _assert_still_serving(client, db)
        bomb = gzip.compress(b" " * (1024 * 1024))  # 1 KiB that inflates to 1 MiB
        inflated = client.post(bomb, JS, Content_Encoding="gzip")
        assert inflated.status == 413
        assert "once decompressed" in inflated.json()["message"]
        _assert_still_serving(client, db)
    finally:
        client.close()


def test_missing_length_is_411(receiver: Receiver, db: str) -> None:
    with socket.create_connection(("127.0.0.1", receiver.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\r\n"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 411 ")
    client = Http(receiver.http_port)
    _assert_still_serving(client, db)
    client.close()


def test_bearer_token_is_required_except_for_health(start_receiver: StartReceiver, db: str) -> None:
    client = Http(start_receiver(auth_token="s3cret").http_port)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            result = client.post(valid_request(), PB, **headers)
            assert result.status == 401
            assert result.headers["www-authenticate"] == 'Bearer realm="tokentrace"'
        assert client.get("/telemetry/60day").status == 401
        assert client.get("/healthz").status == 200
        assert _count(db) == 0
        assert (
            client.post(valid_request(2, salt=6), PB, Authorization="Bearer s3cret").status == 200
        )
        assert client.get("/telemetry/60day", Authorization="Bearer s3cret").status == 200
        assert _count(db) == 2
    finally:
        client.close()


def test_unknown_path_and_wrong_method(http: Http, db: str) -> None:
    assert http.get("/nope").status == 404
    wrong = http.get("/v1/traces")
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    assert http.request("POST", "/telemetry/60day", b"{}", {"Content-Type": JS}).status == 405
    _assert_still_serving(http, db)


def test_root_serves_the_dashboard(http: Http, db: str) -> None:
    result = http.get("/")
    assert result.status == 200 and result.headers["content-type"].startswith("text/html")
    assert b"tokentrace" in result.body


# --- reports -----------------------------------------------------------------------
def _recent_request(salt: int, model: str, n: int, tokens: int) -> bytes:
    start = time.time_ns() - 3_600_000_000_000  # an hour ago: inside every window
    spans = []
    for trace_id, span_id in span_ids(n, salt):
        span = pb_span(trace_id, span_id, output_tokens=tokens, model=model)
        span.start_time_unix_nano, span.end_time_unix_nano = start, start + 2_000_000_000
        spans.append(span)
    return pb_request(spans)


def test_reports_match_the_report_functions(http: Http, db: str) -> None:
    assert http.post(_recent_request(7, "llama3.2", 3, 100)).status == 200
    assert http.post(_recent_request(8, "qwen2.5", 2, 50)).status == 200
    with reports.report_connection(db) as conn:
        expected_efficiency = reports.efficiency(conn, 24, None)
        expected_llama = reports.efficiency(conn, 6, "llama3.2")
        expected_60 = reports.sixty_day(conn)
    efficiency = http.get("/telemetry/efficiency?hours=24").json()
    assert efficiency == {"status": "success", "efficiency": expected_efficiency, "hours": 24}
    assert {row["model"]: row["weighted_ms_per_token"] for row in efficiency["efficiency"]} == {
        "llama3.2": 20.0,
        "qwen2.5": 40.0,
    }
    assert http.get("/telemetry/efficiency").json()["hours"] == 24
    only = http.get("/telemetry/efficiency?hours=6&model=llama3.2").json()
    assert only == {"status": "success", "efficiency": expected_llama, "hours": 6}
    assert [row["model"] for row in only["efficiency"]] == ["llama3.2"]
    assert http.get("/telemetry/efficiency?hours=1.5").json()["hours"] == 1.5
    assert http.get("/telemetry/60day").json() == {"status": "success", "statistics": expected_60}
    footprint = http.get("/telemetry/footprint").json()
    with reports.report_connection(db) as conn:
        expected_footprint = reports.footprint(conn)
    # Sizes and row estimates move with autovacuum: compare the shape and the relations.
    assert set(footprint) == {"status", "footprint"} and footprint["status"] == "success"
    assert set(footprint["footprint"]) == set(expected_footprint)
    names = [r["relation"] for r in footprint["footprint"]["relations"]]
    assert names == [r["relation"] for r in expected_footprint["relations"]] and "spans" in names
    assert footprint["footprint"]["oldest_span"] == expected_footprint["oldest_span"]


def test_report_endpoints_answer_in_the_original_shapes(http: Http, db: str) -> None:
    """Key by key and type by type, as JSON on the wire (docs/reports.md)."""
    before = time.time()
    empty = http.get("/telemetry/footprint").json()
    after = time.time()
    assert set(empty) == {"status", "footprint"} and empty["status"] == "success"
    assert_footprint(empty["footprint"], before=before, after=after)
    assert empty["footprint"]["oldest_telemetry_record"] is None  # null on an empty store
    empty_stats = http.get("/telemetry/60day").json()
    assert_statistics(empty_stats["statistics"])
    assert empty_stats["statistics"]["overall"]["total_measurements"] == 0

    assert http.post(_recent_request(17, "llama3.2", 3, 100)).status == 200
    assert http.post(_recent_request(18, "qwen2.5", 2, 50)).status == 200
    oldest, newest = query(db, "SELECT min(start_time), max(start_time) FROM tokentrace.spans")[0]
    spans = _count(db)

    stats = http.get("/telemetry/60day").json()
    assert set(stats) == {"status", "statistics"} and stats["status"] == "success"
    assert_statistics(stats["statistics"])
    overall = stats["statistics"]["overall"]
    assert (overall["total_measurements"], overall["unique_models"]) == (5, 2)
    assert overall["oldest_record"] == oldest.astimezone(dt.timezone.utc).isoformat()
    assert overall["newest_record"] == newest.astimezone(dt.timezone.utc).isoformat()
    assert stats["statistics"]["model_trends"] == [
        {"component": "llama3.2", "model": "llama3.2", "avg_efficiency": 20.0,
         "measurement_count": 3, "total_tokens_processed": 300},
        {"component": "qwen2.5", "model": "qwen2.5", "avg_efficiency": 40.0,
         "measurement_count": 2, "total_tokens_processed": 100},
    ]  # fmt: skip

    before = time.time()
    foot = http.get("/telemetry/footprint").json()
    after = time.time()
    assert set(foot) == {"status", "footprint"} and foot["status"] == "success"
    assert_footprint(foot["footprint"], before=before, after=after)
    footprint = foot["footprint"]
    assert footprint["oldest_telemetry_record"] == oldest.astimezone(dt.timezone.utc).isoformat()
    assert footprint["row_counts_source"] == "estimated"
    assert {t["tablename"] for t in footprint["table_sizes"]} >= {"spans", "span_rollups", "settings"}
    assert 0 <= footprint["row_counts"]["spans"] <= spans  # the catalog's estimate


def test_responses_are_sent_without_waiting_for_an_ack(http: Http, receiver: Receiver) -> None:
    """Headers and body are two writes: with Nagle's algorithm on, a response's body
    waited for the client's delayed ACK of its headers (~40 ms on Linux)."""
    assert http.get("/healthz").status == 200
    server = receiver._http._server  # the accepted sockets are reachable only here
    with server._connections_lock:
        accepted = list(server._connections)
    assert accepted
    assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted)


def test_reports_are_answered_on_one_kept_connection(http: Http, db: str) -> None:
    before = _report_backends(db)  # the writers' connections, if open yet
    for path in ("/telemetry/efficiency", "/telemetry/60day", "/telemetry/footprint") * 3:
        assert http.get(path).status == 200
    kept = _report_backends(db) - before
    assert len(kept) == 1  # one connection, kept after the first request and reused
    for _ in range(3):
        assert http.get("/").status == 200  # the dashboard reads on it too
    assert _report_backends(db) - before == kept


def _report_backends(dsn: str) -> set[int]:
    """The server's client backends opened by tokentrace (writers, reports), not this one."""
    rows = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'tokentrace' "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    return {int(r[0]) for r in rows}


@pytest.mark.parametrize(
    "path,message",
    [
        ("/telemetry/efficiency?hours=abc", "hours must be a number"),
        ("/telemetry/efficiency?hours=0", "hours must be greater than 0"),
        ("/telemetry/efficiency?hours=nan", "hours must be greater than 0"),
        ("/telemetry/efficiency?hours=1&hours=2", "'hours' given more than once"),
        ("/telemetry/efficiency?component=x", "unknown query parameter 'component'"),
        ("/telemetry/60day?hours=1", "unknown query parameter 'hours'"),
        ("/telemetry/footprint?x", "unknown query parameter 'x'"),
    ],
)
def test_bad_report_parameters_are_400(http: Http, db: str, path: str, message: str) -> None:
    result = http.get(path)
    assert result.status == 400
    body = result.json()
    assert body["status"] == "error" and message in body["error"]
    assert http.get("/telemetry/60day").status == 200


def test_healthz(http: Http) -> None:
    result = http.get("/healthz")
    assert result.status == 200
    assert result.json() == {"status": "ok", "database": "ok"}
