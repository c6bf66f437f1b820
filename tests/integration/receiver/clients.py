"""Plain OTLP clients and request builders for the receiver tests (no mocks, real sockets)."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tokentrace.receiver.grpc_server import FULL_METHOD

SENDER = Path(__file__).with_name("otlp_sender.py")
START_NS = 1_700_000_000_000_000_000  # 2023-11-14, a fixed day: one partition


def span_ids(n: int, salt: int = 0) -> list[tuple[bytes, bytes]]:
    """``n`` distinct (trace_id, span_id) pairs, unique per ``salt`` and run."""
    base = time.time_ns() & 0xFFFFFFFFFFFF
    return [
        (
            (base * 1000 + salt).to_bytes(12, "big") + i.to_bytes(4, "big"),
            (salt * 1_000_000 + i + 1).to_bytes(8, "big"),
        )
        for i in range(n)
    ]


def pb_span(trace_id: bytes, span_id: bytes, *, output_tokens: int = 50, model: str = "m") -> Span:
    attributes = [
        KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
        KeyValue(key="gen_ai.request.model", value=AnyValue(string_value=model)),
        KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=output_tokens)),
    ]
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        name=f"chat {model}",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=START_NS,
        end_time_unix_nano=START_NS + 1_000_000_000,
        attributes=attributes,
    )


def pb_request(spans: Sequence[Span], service: str = "svc") -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
                ),
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )
    body: bytes = request.SerializeToString()
    return body


def valid_request(n: int = 2, salt: int = 99, model: str = "m") -> bytes:
    return pb_request([pb_span(t, s, model=model) for t, s in span_ids(n, salt)])


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """One keep-alive HTTP(S) connection to the receiver."""

    def __init__(self, port: int, ca: Path | None = None, host: str = "127.0.0.1") -> None:
        if ca is None:
            self.conn: http.client.HTTPConnection = http.client.HTTPConnection(
                host, port, timeout=30
            )
        else:
            context = ssl.create_default_context(cafile=str(ca))
            self.conn = http.client.HTTPSConnection(host, port, timeout=30, context=context)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResult:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        return HttpResult(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def post(
        self, body: bytes, content_type: str = "application/x-protobuf", **headers: str
    ) -> HttpResult:
        all_headers = {
            "Content-Type": content_type,
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        return self.request("POST", "/v1/traces", body, all_headers)

    def get(self, path: str, **headers: str) -> HttpResult:
        return self.request("GET", path, headers=headers)

    def close(self) -> None:
        self.conn.close()


@dataclass
class GrpcResult:
    code: grpc.StatusCode
    details: str
    trailers: dict[str, Any]
    response: bytes | None


def grpc_export(
    port: int,
    body: bytes,
    metadata: Sequence[tuple[str, str]] = (),
    *,
    ca: Path | None = None,
    compression: grpc.Compression | None = None,
) -> GrpcResult:
    """One raw ``Export`` call (bytes in, bytes out), so any body can be sent."""
    if ca is None:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
    else:
        credentials = grpc.ssl_channel_credentials(ca.read_bytes())
        channel = grpc.secure_channel(f"localhost:{port}", credentials)
    with channel:
        call = channel.unary_unary(FULL_METHOD, _registered_method=True)
        try:
            response, rpc = call.with_call(
                body, metadata=tuple(metadata), timeout=30, compression=compression
            )
        except grpc.RpcError as error:
            # A failed unary call's RpcError is also a grpc.Call, with code and trailers.
            call_error: Any = error
            trailers = dict(call_error.trailing_metadata() or ())
            return GrpcResult(call_error.code(), call_error.details(), trailers, None)
        return GrpcResult(
            rpc.code(), rpc.details() or "", dict(rpc.trailing_metadata() or ()), response
        )


def start_sender(
    config: dict[str, Any], env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """The official-exporter sender in its own process."""
    return subprocess.Popen(
        [sys.executable, str(SENDER), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or dict(os.environ),
    )


def finish_sender(process: subprocess.Popen[str], timeout: float = 60) -> Any:
    """The sender's JSON report (it must have exited 0)."""
    return finish_sender_logged(process, timeout)[0]


def finish_sender_logged(process: subprocess.Popen[str], timeout: float = 60) -> tuple[Any, str]:
    """The sender's JSON report and its log (the exporters log retries on stderr)."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"sender failed ({process.returncode}):\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1]), err
