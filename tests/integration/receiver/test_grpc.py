"""OTLP/gRPC ingestion: raw calls, so every kind of body and metadata can be sent."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.helpers import query
from tests.integration.receiver.clients import (
    grpc_export,
    pb_request,
    pb_span,
    span_ids,
    valid_request,
)
from tests.integration.receiver.conftest import StartReceiver
from tokentrace.receiver.server import Receiver


def _count(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM tokentrace.spans")[0][0])


def _assert_still_serving(port: int, dsn: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    before = _count(dsn)
    result = grpc_export(port, valid_request(2, salt=int(time.time_ns() % 1_000_000)), metadata)
    assert result.code == grpc.StatusCode.OK, result.details
    assert _count(dsn) == before + 2


def test_export_commits_and_answers_empty_success(receiver: Receiver, db: str) -> None:
    ids = span_ids(3, salt=11)
    result = grpc_export(
        receiver.grpc_port,
        pb_request([pb_span(t, s, output_tokens=40, model="phi3") for t, s in ids]),
    )
    assert result.code == grpc.StatusCode.OK
    assert result.response is not None
    assert not ExportTraceServiceResponse.FromString(result.response).HasField("partial_success")
    rows = query(
        db, "SELECT trace_id, span_id, model, ms_per_token FROM tokentrace.spans ORDER BY span_id"
    )
    assert rows == [(t, s, "phi3", 25.0) for t, s in ids]


def test_gzip_compressed_call(receiver: Receiver, db: str) -> None:
    result = grpc_export(
        receiver.grpc_port, valid_request(4, salt=12), compression=grpc.Compression.Gzip
    )
    assert result.code == grpc.StatusCode.OK
    assert _count(db) == 4


def test_partial_success(receiver: Receiver, db: str) -> None:
    (t1, s1), (t2, s2) = span_ids(2, salt=13)
    body = pb_request([pb_span(t1, s1), pb_span(b"\x00" * 16, s2), pb_span(t2, s2)])
    result = grpc_export(receiver.grpc_port, body)
    assert result.code == grpc.StatusCode.OK and result.response is not None
    partial = ExportTraceServiceResponse.FromString(result.response).partial_success
    assert partial.rejected_spans == 1
    assert "trace_id must be 16 bytes, not all zero" in partial.error_message
    assert _count(db) == 2


def test_a_retried_call_stores_each_span_once(receiver: Receiver, db: str) -> None:
    body = valid_request(6, salt=14)
    for _ in range(3):
        assert grpc_export(receiver.grpc_port, body).code == grpc.StatusCode.OK
    assert _count(db) == 6


def test_undecodable_message_is_invalid_argument(receiver: Receiver, db: str) -> None:
    result = grpc_export(receiver.grpc_port, b"\xff\xff\xff\xff not protobuf")
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a protobuf ExportTraceServiceRequest" in result.details
    _assert_still_serving(receiver.grpc_port, db)


def test_message_over_the_limit_is_resource_exhausted(
    start_receiver: StartReceiver, db: str
) -> None:
    port = start_receiver(grpc_max_request_bytes=64 * 1024).grpc_port
    result = grpc_export(port, b"\x00" * (100 * 1024))
    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "google.rpc.retryinfo-bin" not in result.trailers  # not retryable: it would never fit
    _assert_still_serving(port, db)
    # The limit holds for the decompressed size too.
    many = pb_request([pb_span(t, s) for t, s in span_ids(2000, salt=15)])
    assert len(many) > 64 * 1024
    squeezed = grpc_export(port, many, compression=grpc.Compression.Gzip)
    assert squeezed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_still_serving(port, db)


def test_bearer_token(start_receiver: StartReceiver, db: str) -> None:
    port = start_receiver(auth_token="s3cret").grpc_port
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
        result = grpc_export(port, valid_request(), metadata)
        assert result.code == grpc.StatusCode.UNAUTHENTICATED
        assert result.details == "missing or wrong bearer token"
    assert _count(db) == 0
    _assert_still_serving(port, db, (("authorization", "Bearer s3cret"),))


def test_tls(start_receiver: StartReceiver, db: str, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    port = start_receiver(tls_cert=cert, tls_key=key).grpc_port
    assert grpc_export(port, valid_request(3, salt=16), ca=cert).code == grpc.StatusCode.OK
    assert _count(db) == 3


def test_a_stopped_receiver_is_unavailable_to_clients(start_receiver: StartReceiver) -> None:
    receiver = start_receiver()
    receiver.stop(5.0)
    result = grpc_export(receiver.grpc_port, valid_request())
    assert result.code == grpc.StatusCode.UNAVAILABLE  # retryable: the exporter tries again
