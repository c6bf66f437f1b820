"""The receiver under fuzzed requests: every request gets a defined answer, and it keeps serving.

One receiver (HTTP and gRPC, small size limits so that "too large" is exercised
too) takes hypothesis-generated requests over real sockets: OTLP protobuf and JSON
bodies shaped like export requests but hostile in their values, mutated and random
bodies, wrong and mixed-case content types, gzip/deflate that is or is not, other
paths and methods, and raw bytes that are not even HTTP. Every answer must be one
the receiver documents (never a 500, never a dropped connection without an answer
to a complete request), no ERROR may be logged, and a valid export must still be
stored at the end.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc.status_pb2 import Status as RpcStatus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.integration.receiver.clients import START_NS, Http, valid_request
from tests.integration.receiver.conftest import settings as receiver_settings
from tests.unit.hostile.strategies import json_body, json_requests_for, pb_requests_for
from tokentrace.receiver.grpc_server import FULL_METHOD
from tokentrace.receiver.server import Receiver

HTTP_EXAMPLES = 300
GRPC_EXAMPLES = 200
RAW_EXAMPLES = 150
LIMIT = 16 * 1024  # both protocols' request limit here
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

SERVER_FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A few fixed days, so fuzzing does not create a partition per random timestamp.
timestamps = st.sampled_from((0, START_NS, START_NS + 10**12, 2**64 - 1))
pb_bodies = pb_requests_for(timestamps).map(lambda r: r.SerializeToString())
js_bodies = st.builds(json_body, json_requests_for(timestamps), st.booleans())


def _mutate(body: bytes, data: st.DataObject) -> bytes:
    out = bytearray(body)
    for _ in range(data.draw(st.integers(0, 4), label="mutations")):
        if not out:
            break
        position = data.draw(st.integers(0, len(out) - 1), label="at")
        out[position : position + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=4))
    return bytes(out)


bodies = st.one_of(pb_bodies, js_bodies, st.binary(max_size=3_000))


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_receiver(dsn: str) -> Iterator[Receiver]:
    receiver = Receiver(
        receiver_settings(http_max_request_bytes=LIMIT, grpc_max_request_bytes=LIMIT), dsn
    )
    receiver.start()
    yield receiver
    receiver.stop()
    with psycopg.connect(dsn, autocommit=True) as conn:  # leave no fuzz partitions behind
        conn.execute(
            "DO $$ DECLARE p record; BEGIN"
            " FOR p IN SELECT partition FROM tokentrace.span_partitions LOOP"
            " EXECUTE format('DROP TABLE %s', p.partition); END LOOP; END $$"
        )
        conn.execute(
            "DO $$ BEGIN IF to_regclass('tokentrace.span_rollups') IS NOT NULL THEN"
            " TRUNCATE tokentrace.span_rollups; END IF; END $$"
        )


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("tokentrace", "grpc")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def http(fuzz_receiver: Receiver) -> Iterator[Http]:
    client = Http(fuzz_receiver.http_port)
    yield client
    client.close()


def _assert_still_serving(receiver: Receiver, error_log: ErrorLog, dsn: str) -> None:
    assert not error_log.records, [r.getMessage() for r in error_log.records[:5]]
    client = Http(receiver.http_port)
    try:
        assert client.post(valid_request(2, salt=998)).status == 200
        assert client.get("/healthz").status == 200
    finally:
        client.close()
    with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}") as channel:
        channel.unary_unary(FULL_METHOD, _registered_method=True)(
            valid_request(2, salt=997), timeout=30
        )


# --- HTTP ------------------------------------------------------------------------------------
content_types = st.sampled_from(
    (PROTOBUF, JSON, "application/json; charset=utf-8", "APPLICATION/X-PROTOBUF", "text/plain", "")
)
encodings = st.sampled_from((None, "gzip", "deflate", "identity", "br", "gzip, deflate"))


def _http_answer_is_defined(status: int, headers: dict[str, str], body: bytes, media: str) -> None:
    assert status in (200, 400, 413, 415), (status, body[:200])
    content_type = headers["content-type"]
    if media == PROTOBUF:
        assert content_type == PROTOBUF
        if status == 200:
            ExportTraceServiceResponse.FromString(body)
        else:
            assert RpcStatus.FromString(body).message
    else:
        assert content_type == JSON
        json.loads(body)


@settings(SERVER_FUZZ, max_examples=HTTP_EXAMPLES)
@given(bodies, content_types, encodings, st.booleans(), st.data())
def test_every_http_export_gets_a_defined_answer(
    fuzz_receiver: Receiver,
    http: Http,
    error_log: ErrorLog,
    body: bytes,
    content_type: str,
    encoding: str | None,
    compress: bool,
    data: st.DataObject,
) -> None:
    body = _mutate(body, data)
    if compress and encoding == "gzip":
        body = gzip.compress(body)
    elif compress and encoding == "deflate":
        body = zlib.compress(body)
    headers = {"Content-Type": content_type} if content_type else {}
    if encoding:
        headers["Content-Encoding"] = encoding
    result = http.request("POST", "/v1/traces", body, headers)
    media = content_type.split(";")[0].strip().lower()
    _http_answer_is_defined(result.status, result.headers, result.body, media)
    if encoding in ("br", "gzip, deflate") and media in (PROTOBUF, JSON) and len(body) <= LIMIT:
        assert result.status == 415


@settings(SERVER_FUZZ, max_examples=100)
@given(
    st.sampled_from(("GET", "POST", "PUT", "DELETE", "OPTIONS")),
    st.one_of(
        st.sampled_from(
            (
                "/v1/traces",
                "/v1/traces?x=1",
                "/v1/logs",
                "/../../etc/passwd",
                "/healthz",
                "/telemetry/efficiency?hours=NaN",
                "/telemetry/efficiency?hours=-1&model=%00",
                "/telemetry/efficiency?hours=1e309",
                "/telemetry/60day?x=1",
                "/telemetry/footprint",
                "/telemetry/efficiency?model=%27%3B%20DROP%20TABLE%20tokentrace.spans%3B--",
                "//",
                "/%ff%fe",
                "/?" + "a=1&" * 50,
            )
        ),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
            lambda p: "/" + p
        ),
    ),
    st.binary(max_size=200),
)
def test_other_paths_and_methods_get_a_defined_answer(
    fuzz_receiver: Receiver, http: Http, error_log: ErrorLog, method: str, path: str, body: bytes
) -> None:
    result = http.request(method, path, body if method in ("POST", "PUT") else None)
    assert result.status in (200, 400, 404, 405, 415, 501), (
        method,
        path,
        result.status,
        result.body[:200],
    )
    assert result.status != 500


# --- gRPC ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def channel(fuzz_receiver: Receiver) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        f"127.0.0.1:{fuzz_receiver.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as chan:
        yield chan


@settings(SERVER_FUZZ, max_examples=GRPC_EXAMPLES)
@given(bodies, st.booleans(), st.data())
def test_every_grpc_export_gets_a_defined_answer(
    channel: grpc.Channel, error_log: ErrorLog, body: bytes, gzip_it: bool, data: st.DataObject
) -> None:
    body = _mutate(body, data)
    call = channel.unary_unary(FULL_METHOD, _registered_method=True)
    compression = grpc.Compression.Gzip if gzip_it else grpc.Compression.NoCompression
    try:
        response = call(body, timeout=30, compression=compression)
    except grpc.RpcError as error:
        failed: Any = error
        assert failed.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ), (
            failed.code(),
            failed.details(),
        )
        return
    ExportTraceServiceResponse.FromString(response)


# --- bytes that are not (quite) HTTP -----------------------------------------------------------
RAW_CASES = (
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS ClientHello on plain HTTP
    b"POST /v1/traces HTTP/1.1\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{}",
    b"POST /v1/traces HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/traces HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
    b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /v1/traces HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/json\r\n\r\n",
)
RAW_STATUSES = {200, 400, 404, 405, 408, 411, 413, 414, 415, 431, 501, 505}


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close first (a request it refused mid-way)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _assert_raw_answer(answer: bytes) -> None:
    if not answer:
        return  # nothing that could be answered (the server closed the connection)
    if answer.startswith(b"HTTP/1."):
        status = int(answer.split(b" ", 2)[1])
    else:
        # A request line that names no HTTP/1.x version is answered as HTTP/0.9 does
        # (the standard library's error page, no status line), then the connection closes.
        match = re.search(rb"Error code: (\d+)", answer)
        assert match, answer[:300]
        status = int(match.group(1))
    assert status in RAW_STATUSES, answer[:300]


@pytest.mark.parametrize("data", RAW_CASES, ids=range(len(RAW_CASES)))
def test_malformed_http_gets_a_defined_answer(
    fuzz_receiver: Receiver, error_log: ErrorLog, data: bytes
) -> None:
    _assert_raw_answer(_raw_exchange(fuzz_receiver.http_port, data))


@settings(SERVER_FUZZ, max_examples=RAW_EXAMPLES)
@given(
    st.sampled_from(
        (b"", b"POST /v1/traces HTTP/1.1\r\n", b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.0\r\n")
    ),
    st.binary(max_size=300),
)
def test_random_bytes_on_the_http_port(
    fuzz_receiver: Receiver, error_log: ErrorLog, prefix: bytes, data: bytes
) -> None:
    _assert_raw_answer(_raw_exchange(fuzz_receiver.http_port, prefix + data))


def test_still_serving_after_the_fuzzing(
    fuzz_receiver: Receiver, error_log: ErrorLog, dsn: str
) -> None:
    """Last in this module: the receiver answers and stores a valid export after it all."""
    _assert_still_serving(fuzz_receiver, error_log, dsn)
