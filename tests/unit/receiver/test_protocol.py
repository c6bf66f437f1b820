"""Response bodies and retry hints."""

from __future__ import annotations

import json

from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tokentrace.receiver import protocol
from tokentrace.receiver.decode import Rejection
from tokentrace.receiver.ingest import ExportOutcome


def test_full_success_has_no_partial_success() -> None:
    response = ExportTraceServiceResponse.FromString(
        protocol.export_response(0, "", protocol.PROTOBUF)
    )
    assert not response.HasField("partial_success")
    assert protocol.export_response(0, "", protocol.JSON) == b"{}"


def test_partial_success_in_both_encodings() -> None:
    response = ExportTraceServiceResponse.FromString(
        protocol.export_response(1, "why", protocol.PROTOBUF)
    )
    assert response.partial_success.rejected_spans == 1
    assert response.partial_success.error_message == "why"
    as_json = json.loads(protocol.export_response(1, "why", protocol.JSON))
    assert as_json == {
        "partialSuccess": {"rejectedSpans": "1", "errorMessage": "why"}
    }  # int64 as a string


def test_error_status_bodies() -> None:
    status = Status.FromString(protocol.status_body(3, "bad body", protocol.PROTOBUF))
    assert (status.code, status.message) == (3, "bad body")
    assert json.loads(protocol.status_body(14, "later", protocol.JSON)) == {
        "code": 14,
        "message": "later",
    }


def test_retry_trailers_for_the_collector_and_the_python_exporter() -> None:
    trailers = dict(protocol.retry_trailers(protocol.CODE_UNAVAILABLE, "down", 2))
    info = RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    assert info.retry_delay.seconds == 2
    status = Status.FromString(trailers["grpc-status-details-bin"])
    assert (status.code, status.message) == (14, "down")
    [detail] = status.details
    unpacked = RetryInfo()
    assert detail.Unpack(unpacked) and unpacked.retry_delay.seconds == 2


def test_outcome_message_names_each_rejected_span_and_caps_the_list() -> None:
    assert ExportOutcome(received=3).error_message() == ""
    rejected = [Rejection("aa", f"{i:02x}", "bad") for i in range(7)]
    message = ExportOutcome(received=10, rejected=rejected).error_message()
    assert message.startswith("7 of 10 spans rejected: span aa/00: bad; span aa/01: bad;")
    assert message.endswith("span aa/04: bad; and 2 more")
