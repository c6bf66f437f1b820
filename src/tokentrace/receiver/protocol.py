"""OTLP response bodies, error statuses and retry hints. Pure, no I/O.

What a client reads back, per the OTLP specification:

* success: an ``ExportTraceServiceResponse``; when some spans were refused, its
  ``partial_success`` says how many (``rejected_spans``) and why
  (``error_message``). A client must not retry a partial success.
* failure over HTTP: a ``google.rpc.Status`` body in the request's encoding.
* "try again later": gRPC ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED`` with a
  ``google.rpc.RetryInfo``, sent both in the standard ``grpc-status-details-bin``
  trailer (read by the Collector) and in ``google.rpc.retryinfo-bin`` (the only one
  the Python exporter reads); HTTP 503 / 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
from typing import Final

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"

# google.rpc.Code values (the same numbers as grpc.StatusCode).
CODE_INVALID_ARGUMENT: Final = 3
CODE_RESOURCE_EXHAUSTED: Final = 8
CODE_INTERNAL: Final = 13
CODE_UNAVAILABLE: Final = 14
CODE_UNAUTHENTICATED: Final = 16

# How long a client should wait before retrying. While the database is down the
# Python exporters retry at most 6 times within their 10 s deadline: 2 s spreads
# those tries over the whole deadline instead of giving up after 6 quick ones.
RETRY_UNAVAILABLE_SECONDS: Final = 2
RETRY_OVERLOADED_SECONDS: Final = 1

STATUS_DETAILS_TRAILER: Final = "grpc-status-details-bin"
RETRY_INFO_TRAILER: Final = "google.rpc.retryinfo-bin"

_EMPTY_RESPONSE_PROTOBUF: Final[bytes] = ExportTraceServiceResponse().SerializeToString()


def export_response(rejected: int, message: str, content_type: str) -> bytes:
    """An ``ExportTraceServiceResponse`` body; ``partial_success`` only when something was refused."""
    if content_type == JSON:
        if not rejected and not message:
            return b"{}"
        partial = {"rejectedSpans": str(rejected), "errorMessage": message}
        return json.dumps({"partialSuccess": partial}).encode()
    if not rejected and not message:
        return _EMPTY_RESPONSE_PROTOBUF
    response = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
    )
    body: bytes = response.SerializeToString()
    return body


def retry_info(seconds: int) -> RetryInfo:
    return RetryInfo(retry_delay=Duration(seconds=seconds))


def status(code: int, message: str, retry_seconds: int | None = None) -> Status:
    """A ``google.rpc.Status``, with a packed ``RetryInfo`` when a retry delay is given."""
    result = Status(code=code, message=message)
    if retry_seconds is not None:
        detail = AnyMessage()
        detail.Pack(retry_info(retry_seconds))
        result.details.append(detail)
    return result


def status_body(code: int, message: str, content_type: str) -> bytes:
    """An HTTP error body: ``google.rpc.Status`` in the request's encoding."""
    if content_type == PROTOBUF:
        body: bytes = status(code, message).SerializeToString()
        return body
    return json.dumps({"code": code, "message": message}).encode()


def retry_trailers(code: int, message: str, seconds: int) -> tuple[tuple[str, bytes], ...]:
    """gRPC trailing metadata that tells every kind of client when to retry."""
    return (
        (STATUS_DETAILS_TRAILER, status(code, message, seconds).SerializeToString()),
        (RETRY_INFO_TRAILER, retry_info(seconds).SerializeToString()),
    )
