"""Hostile requests to a real receiver over the test PostgreSQL: builders and helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from psycopg.rows import dict_row

from tests.integration.receiver.clients import START_NS, Http, HttpResult

# The receivers' fixtures (in-process Receiver on free loopback ports over `db`).
from tests.integration.receiver.conftest import receiver, start_receiver  # noqa: F401

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SECOND_NS = 1_000_000_000

Clients = Callable[[int], Http]


@pytest.fixture
def clients() -> Iterator[Clients]:
    """Open keep-alive HTTP clients to a port; all are closed after the test."""
    opened: list[Http] = []

    def open_client(port: int) -> Http:
        client = Http(port)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def pb_kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def pb_str(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def pb_span(
    trace_id: bytes,
    span_id: bytes,
    attributes: list[KeyValue],
    *,
    name: str = "chat m",
    start: int = START_NS,
    end: int | None = None,
    status_message: str = "",
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        name=name,
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start,
        end_time_unix_nano=start + SECOND_NS if end is None else end,
        attributes=attributes,
        status=Status(
            code=Status.STATUS_CODE_ERROR if status_message else 0, message=status_message
        ),
    )


def pb_body(spans: list[Span], service: str = "hostile") -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[pb_kv("service.name", pb_str(service))]),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )
    body: bytes = request.SerializeToString()
    return body


def js_kv(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def js_span(
    trace_id: bytes,
    span_id: bytes,
    attributes: list[dict[str, Any]],
    *,
    name: str = "chat m",
    start: Any = None,
    end: Any = None,
) -> dict[str, Any]:
    return {
        "traceId": trace_id.hex(),
        "spanId": span_id.hex(),
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(START_NS) if start is None else start,
        "endTimeUnixNano": str(START_NS + SECOND_NS) if end is None else end,
        "attributes": attributes,
    }


def js_document(spans: list[dict[str, Any]], service: str = "hostile") -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [js_kv("service.name", {"stringValue": service})]},
                "scopeSpans": [{"spans": spans}],
            }
        ]
    }


def js_body(spans: list[dict[str, Any]], service: str = "hostile") -> bytes:
    return json.dumps(js_document(spans, service)).encode()


def rejected(result: HttpResult) -> tuple[int, str]:
    """``partial_success`` of a 200 answer: (rejected spans, error message)."""
    assert result.status == 200, (result.status, result.body[:300])
    if result.headers["content-type"] == JSON:
        partial = result.json().get("partialSuccess", {})
        return int(partial.get("rejectedSpans", 0)), str(partial.get("errorMessage", ""))
    response = ExportTraceServiceResponse.FromString(result.body)
    return response.partial_success.rejected_spans, response.partial_success.error_message


def stored(dsn: str, span_id: bytes) -> dict[str, Any]:
    """The stored row of ``span_id`` (exactly one must exist)."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT * FROM tokentrace.spans WHERE span_id = %s", (span_id,)
        ).fetchall()
    assert len(rows) == 1, f"{len(rows)} rows for span {span_id.hex()}"
    return rows[0]


def count_spans(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tokentrace.spans").fetchone()
    assert row is not None
    return int(row[0])


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0
