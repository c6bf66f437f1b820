"""OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

A standard OTLP exporter or Collector pointed at the gRPC endpoint (default
``127.0.0.1:4317``) gets, per request:

=============================  ==============================================
``OK``                         committed; ``partial_success`` counts refused spans
``INVALID_ARGUMENT``           the message is not an ``ExportTraceServiceRequest``
``UNAUTHENTICATED``            ``TOKENTRACE_AUTH_TOKEN`` is set and the
                               ``authorization: Bearer …`` metadata does not match
``RESOURCE_EXHAUSTED``         over the size limit (from gRPC itself, not
                               retryable) — or, with ``RetryInfo``, too many
                               requests in progress (retryable)
``UNAVAILABLE`` + RetryInfo    the database cannot be reached (retryable)
=============================  ==============================================

The method is registered with raw bytes in and out, so a body that is not protobuf
is answered ``INVALID_ARGUMENT`` by us (grpcio would say ``INTERNAL`` had it failed
to deserialize). gzip-compressed requests are decompressed by grpcio.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import grpc

from tokentrace.httpkit import authorized
from tokentrace.receiver import protocol
from tokentrace.receiver.decode import DecodeError, decode_protobuf
from tokentrace.receiver.ingest import (
    Ingestor,
    Overloaded,
    StorageError,
    Unavailable,
)
from tokentrace.receiver.settings import ServeSettings

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METHOD = "Export"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
# Threads beyond the in-flight limit let excess requests reach the handler and be
# told to retry, instead of waiting unseen in grpcio's queue.
_EXTRA_THREADS = 4


class BindError(OSError):
    """The endpoint could not be listened on."""


class TraceService:
    """The ``Export`` handler: authorize, decode, store, answer."""

    def __init__(self, ingestor: Ingestor, auth_token: str | None) -> None:
        self._ingestor = ingestor
        self._token = auth_token

    def export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        if not authorized(_metadata(context, "authorization"), self._token):
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            with self._ingestor.admitted():
                outcome = self._ingestor.store(body, decode_protobuf)
        except DecodeError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            _abort_retry(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                protocol.CODE_RESOURCE_EXHAUSTED,
                f"{exc}; retry later",
                protocol.RETRY_OVERLOADED_SECONDS,
            )
        except Unavailable:
            _abort_retry(
                context,
                grpc.StatusCode.UNAVAILABLE,
                protocol.CODE_UNAVAILABLE,
                "database unavailable; retry later",
                protocol.RETRY_UNAVAILABLE_SECONDS,
            )
        except StorageError as exc:
            _abort(context, grpc.StatusCode.INTERNAL, f"the database refused the batch: {exc}")
        return protocol.export_response(
            outcome.rejected_count, outcome.error_message(), protocol.PROTOBUF
        )

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.export)  # bytes in, bytes out
        result: grpc.GenericRpcHandler = grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: method}
        )
        return result


def _metadata(context: grpc.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value: Any = item.value
            return value if isinstance(value, str) else None
    return None


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: grpc aborts by raising")  # pragma: no cover


def _abort_retry(
    context: grpc.ServicerContext, code: grpc.StatusCode, rpc_code: int, message: str, seconds: int
) -> NoReturn:
    context.set_trailing_metadata(protocol.retry_trailers(rpc_code, message, seconds))
    _abort(context, code, message)


class GrpcServer:
    """The gRPC server bound to the configured endpoint; :attr:`port` is the actual port."""

    def __init__(self, service: TraceService, settings: ServeSettings) -> None:
        options = [
            ("grpc.max_receive_message_length", settings.grpc_max_request_bytes),
            # grpcio enables SO_REUSEPORT by default, which lets a second `tokentrace
            # serve` silently share (and split) the port: make that an error instead,
            # except between the processes of one `serve --workers N`.
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ]
        self._pool = ThreadPoolExecutor(
            settings.max_inflight + _EXTRA_THREADS, thread_name_prefix="tokentrace-grpc"
        )
        self._server = grpc.server(self._pool, handlers=[service.handler()], options=options)
        self.address = str(settings.grpc_endpoint)
        try:
            self.port = self._bind(settings)
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def _bind(self, settings: ServeSettings) -> int:
        try:
            if settings.tls_cert is not None and settings.tls_key is not None:
                pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
                port = self._server.add_secure_port(
                    self.address, grpc.ssl_server_credentials([pair])
                )
            else:
                port = self._server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpcio raises this when it cannot bind
            raise BindError(f"cannot listen for OTLP/gRPC on {self.address}: {exc}") from None
        if not port:
            raise BindError(f"cannot listen for OTLP/gRPC on {self.address}")
        return int(port)

    def start(self) -> None:
        self._server.start()

    def begin_stop(self, grace_seconds: float) -> threading.Event:
        """Refuse new calls at once (``UNAVAILABLE``, which clients retry); calls in
        progress may finish for up to ``grace_seconds``. The event is set when all are done."""
        event: threading.Event = self._server.stop(grace_seconds)
        return event

    def close(self) -> None:
        """After :meth:`begin_stop`'s event: release the worker threads."""
        self._pool.shutdown(wait=True)
