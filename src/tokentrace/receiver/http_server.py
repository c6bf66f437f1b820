"""OTLP/HTTP and the reports, on one HTTP port (default ``127.0.0.1:4318``).

======================================  ===========================================
``POST /v1/traces``                     OTLP export: ``application/x-protobuf`` or
                                        ``application/json``, optionally
                                        ``Content-Encoding: gzip``; the answer is in
                                        the request's encoding
``GET /telemetry/efficiency``           ``?hours=24&model=…`` →
                                        ``{"status": "success", "efficiency": [...], "hours": 24}``
``GET /telemetry/60day``                ``{"status": "success", "statistics": {...}}``
``GET /telemetry/footprint``            ``{"status": "success", "footprint": {...}}``
``GET /telemetry/alerts``               ``{"status": "success", "alerts": [...], "firing": N,
                                        "thresholds": {...}}`` (see :mod:`tokentrace.alerts`)
``GET /healthz``                        200 when the database answers, else 503
``GET /``                               the dashboard (see :mod:`tokentrace.dashboard`)
======================================  ===========================================

Status codes of ``POST /v1/traces``: 200 once the spans are committed (with
``partialSuccess`` when some were refused); 400 for a body that cannot be decoded;
401 without the right ``Authorization: Bearer …`` (when ``TOKENTRACE_AUTH_TOKEN``
is set; ``/healthz`` never asks for it, and ``/`` signs in with the token); 411 without a length; 413 over
the size limit (counted after decompression); 415 for another content type or
encoding; 429 + ``Retry-After`` when too many requests are in progress; 503 +
``Retry-After`` when the database cannot be reached. Error bodies are a
``google.rpc.Status``. The reports answer 400 with ``{"status": "error", "error":
…}`` for a bad query parameter and 503 when the database is down.

The reports and the dashboard read on connections kept between requests
(:mod:`tokentrace.store.pool`): a report's first query on a new connection costs
15–30 ms more than on one that has run it.

Routes live in :attr:`HttpApp.routes` (method → path → handler), so a page is added
with one entry. Built on the standard library's ``ThreadingHTTPServer``: one thread
per connection, HTTP/1.1 keep-alive, no framework to install.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import psycopg
from opentelemetry.instrumentation.utils import suppress_instrumentation

from tokentrace import alerts, reports
from tokentrace.dashboard import handle_dashboard
from tokentrace.receiver import protocol
from tokentrace.receiver.decode import DecodeError, decode_json, decode_protobuf
from tokentrace.receiver.ingest import (
    Ingestor,
    Overloaded,
    StorageError,
    Unavailable,
    authorized,
)
from tokentrace.receiver.settings import ServeSettings

_log = logging.getLogger(__name__)
JSON_TYPE = "application/json"
# A body refused for its size is still read (up to this much) and thrown away, so
# the client, still sending, gets the 413 instead of a reset connection.
_MAX_DISCARD_BYTES = 64 * 1024 * 1024
_MAX_QUERY_FIELDS = 20
_HEALTH_CONNECT_TIMEOUT_S = 3
_IDLE_TIMEOUT_S = 60.0
_SHUTDOWN_POLL_S = 0.1  # how soon the accept loop notices a shutdown
_DB_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


class HttpError(Exception):
    """Ends a request with ``status``; the body is shaped by the route's error style."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class Request:
    """What a route sees: headers, query parameters, and a bounded body reader."""

    def __init__(self, handler: BaseHTTPRequestHandler, path: str, query: str) -> None:
        self._handler = handler
        self.path = path
        self.query = query
        self.headers: Message = handler.headers
        self.body_read = False

    def params(self, allowed: tuple[str, ...]) -> dict[str, str]:
        """Query parameters, each at most once and all of them in ``allowed`` (else 400)."""
        try:
            parsed = parse_qs(self.query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
        except ValueError as exc:
            raise HttpError(400, f"bad query string: {exc}") from None
        unknown = sorted(set(parsed) - set(allowed))
        if unknown:
            raise HttpError(
                400,
                f"unknown query parameter {unknown[0]!r} (allowed: {', '.join(allowed) or 'none'})",
            )
        repeated = [key for key, values in parsed.items() if len(values) > 1]
        if repeated:
            raise HttpError(400, f"query parameter {repeated[0]!r} given more than once")
        return {key: values[0] for key, values in parsed.items()}

    def media_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()

    def read_body(self, limit: int) -> bytes:
        """The body, decompressed, at most ``limit`` bytes (413 beyond, 400 if malformed)."""
        raw = self._read_raw(limit)
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding in ("identity", "none", ""):
            return raw
        if encoding in ("gzip", "x-gzip", "deflate"):
            return _inflate(raw, limit, encoding)
        raise HttpError(415, f"unsupported Content-Encoding {encoding!r} (use gzip or none)")

    def _read_raw(self, limit: int) -> bytes:
        transfer = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if transfer == "chunked":
            body = _read_chunked(self._handler.rfile, limit)  # on error the connection is closed
            self.body_read = True
            return body
        if transfer:
            raise HttpError(501, f"unsupported Transfer-Encoding {transfer!r}")
        length = self.content_length()
        if length is None:
            raise HttpError(411, "Content-Length is required")
        if length > limit:
            self.discard_body()
            raise HttpError(413, f"body of {length} bytes is over the {limit}-byte limit")
        body = self._handler.rfile.read(length)
        self.body_read = True
        if len(body) < length:
            raise HttpError(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def content_length(self) -> int | None:
        text = self.headers.get("Content-Length")
        if text is None:
            return None
        if not text.strip().isdigit():
            raise HttpError(400, f"bad Content-Length {text!r}")
        return int(text)

    def has_unread_body(self) -> bool:
        """True when body bytes are still on the connection (they would be misread as a request)."""
        if self.body_read:
            return False
        if self.headers.get("Transfer-Encoding"):
            return True
        length = (self.headers.get("Content-Length") or "0").strip()
        return length != "0"

    def discard_body(self) -> None:
        """Read and drop an unwanted body, so the answer reaches the client (if not too big)."""
        if not self.has_unread_body() or self.headers.get("Transfer-Encoding"):
            return
        try:
            length = self.content_length() or 0
        except HttpError:
            return
        if length > _MAX_DISCARD_BYTES:
            return
        remaining = length
        while remaining > 0:
            chunk = self._handler.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
        self.body_read = remaining == 0


def _inflate(raw: bytes, limit: int, encoding: str) -> bytes:
    # wbits 47 reads a gzip or zlib header; raw deflate is tried when there is none.
    for wbits in (47, -15) if encoding == "deflate" else (31,):
        inflater = zlib.decompressobj(wbits)
        try:
            body = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            error = exc
            continue
        if len(body) > limit or inflater.unconsumed_tail:
            raise HttpError(413, f"body is over the {limit}-byte limit once decompressed")
        if not inflater.eof:
            raise HttpError(400, f"{encoding} body is truncated")
        return body
    raise HttpError(400, f"body is not valid {encoding}: {error}")


def _read_chunked(rfile: Any, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "malformed chunked body") from None
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers, ignored
            return b"".join(parts)
        total += size
        if total > limit:
            raise HttpError(413, f"body is over the {limit}-byte limit")
        chunk = rfile.read(size)
        if len(chunk) < size:
            raise HttpError(400, "chunked body ended early")
        parts.append(chunk)
        rfile.readline(1024)  # the CRLF after each chunk


Route = Callable[[Request], Response]


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, default=str, ensure_ascii=False).encode()
    return Response(status, body, JSON_TYPE, headers)


def _retry_after(seconds: int) -> tuple[tuple[str, str], ...]:
    return (("Retry-After", str(seconds)),)


class HttpApp:
    """The routes and what they share; one per server."""

    def __init__(self, ingestor: Ingestor, dsn: str, settings: ServeSettings) -> None:
        self.ingestor = ingestor
        self.dsn = dsn
        self.settings = settings
        # Reports and the dashboard read on kept connections (tokentrace.store.pool).
        self.report_connections = reports.report_pool(dsn)
        # From the environment once, as `tokentrace serve` checked them at start-up.
        self.alert_thresholds = alerts.Thresholds.resolve()
        self.routes: dict[str, dict[str, Route]] = {
            "GET": {
                "/": self.dashboard,
                "/healthz": self.healthz,
                "/telemetry/efficiency": self.efficiency,
                "/telemetry/60day": self.sixty_day,
                "/telemetry/footprint": self.footprint,
                "/telemetry/alerts": self.alerts,
            },
            "POST": {"/v1/traces": self.export_traces},
        }
        # Paths anyone may read even when a bearer token is configured.
        self.public_paths: set[str] = {"/", "/healthz"}
        self.draining = False
        self._inflight = 0
        self._idle = threading.Condition()

    # --- bookkeeping for draining --------------------------------------------------
    def begin(self) -> None:
        with self._idle:
            self._inflight += 1

    def end(self) -> None:
        with self._idle:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in progress; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    # --- OTLP ----------------------------------------------------------------------
    def export_traces(self, request: Request) -> Response:
        media = request.media_type()
        if media not in (protocol.PROTOBUF, protocol.JSON):
            request.discard_body()
            return _status_response(
                415,
                f"Content-Type must be {protocol.PROTOBUF} or {protocol.JSON}, "
                f"not {media or 'missing'!r}",
                protocol.JSON,
            )
        try:
            body = request.read_body(self.settings.http_max_request_bytes)
            decode = decode_protobuf if media == protocol.PROTOBUF else decode_json
            with self.ingestor.admitted():
                outcome = self.ingestor.store(body, decode)
        except HttpError as exc:
            return _status_response(exc.status, str(exc), media, exc.headers)
        except DecodeError as exc:
            return _status_response(400, str(exc), media)
        except Overloaded as exc:
            return _status_response(
                429, f"{exc}; retry later", media, _retry_after(protocol.RETRY_OVERLOADED_SECONDS)
            )
        except Unavailable:
            return _status_response(
                503,
                "database unavailable; retry later",
                media,
                _retry_after(protocol.RETRY_UNAVAILABLE_SECONDS),
            )
        except StorageError as exc:
            return _status_response(500, f"the database refused the batch: {exc}", media)
        body = protocol.export_response(outcome.rejected_count, outcome.error_message(), media)
        return Response(200, body, media)

    # --- reports -------------------------------------------------------------------
    def efficiency(self, request: Request) -> Response:
        params = request.params(("hours", "model"))
        try:
            hours = reports.check_hours(params.get("hours", "24"))
        except reports.ReportError as exc:
            raise HttpError(400, str(exc)) from None
        model = params.get("model") or None
        shown_hours: float | int = int(hours) if hours.is_integer() else hours
        return self._report(
            lambda conn: {
                "status": "success",
                "efficiency": reports.efficiency(conn, hours, model),
                "hours": shown_hours,
            }
        )

    def sixty_day(self, request: Request) -> Response:
        request.params(())
        return self._report(
            lambda conn: {"status": "success", "statistics": reports.sixty_day(conn)}
        )

    def footprint(self, request: Request) -> Response:
        request.params(())
        return self._report(
            lambda conn: {"status": "success", "footprint": reports.footprint(conn)}
        )

    def alerts(self, request: Request) -> Response:
        request.params(())
        return self._report(lambda conn: alerts.report(conn, self.alert_thresholds))

    def _report(self, build: Callable[[psycopg.Connection[Any]], dict[str, Any]]) -> Response:
        try:
            with suppress_instrumentation():
                payload = self.report_connections.run(build)
        except reports.ReportError as exc:
            raise HttpError(400, str(exc)) from None
        except _DB_DOWN:
            raise HttpError(
                503,
                "database unavailable; retry later",
                _retry_after(protocol.RETRY_UNAVAILABLE_SECONDS),
            ) from None
        return json_response(200, payload)

    # --- operations ----------------------------------------------------------------
    def healthz(self, request: Request) -> Response:
        if self.draining:
            return json_response(503, {"status": "draining"})
        try:
            with (
                suppress_instrumentation(),
                psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=_HEALTH_CONNECT_TIMEOUT_S,
                    application_name="tokentrace",
                ) as conn,
            ):
                conn.execute("SELECT 1")
        except psycopg.Error:
            return json_response(
                503,
                {"status": "unavailable", "database": "unreachable"},
                _retry_after(protocol.RETRY_UNAVAILABLE_SECONDS),
            )
        return json_response(200, {"status": "ok", "database": "ok"})

    def dashboard(self, request: Request) -> Response:
        # The page checks the token itself: a browser following a link cannot send an
        # Authorization header, so it also accepts the cookie its sign-in form sets.
        status, headers, body = handle_dashboard(
            request.query,
            self.dsn,
            authorization=request.headers.get("Authorization"),
            cookie=request.headers.get("Cookie"),
            auth_token=self.settings.auth_token,
            connections=self.report_connections,
        )
        content_type = headers.pop("Content-Type")
        return Response(status, body, content_type, tuple(headers.items()))


_RPC_CODES = {
    400: protocol.CODE_INVALID_ARGUMENT,
    401: protocol.CODE_UNAUTHENTICATED,
    429: protocol.CODE_RESOURCE_EXHAUSTED,
    503: protocol.CODE_UNAVAILABLE,
}


def _status_response(
    status: int, message: str, media: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """An OTLP error answer: a ``google.rpc.Status`` in the request's encoding."""
    content_type = protocol.PROTOBUF if media == protocol.PROTOBUF else protocol.JSON
    fallback = protocol.CODE_INTERNAL if status >= 500 else protocol.CODE_INVALID_ARGUMENT
    code = _RPC_CODES.get(status, fallback)
    return Response(
        status, protocol.status_body(code, message, content_type), content_type, headers
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: exporters reuse their connection
    server_version = "tokentrace"
    sys_version = ""  # no Python version in the Server header
    timeout = _IDLE_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        # The headers and the body go out in two writes; with Nagle's algorithm the
        # body waits for the client's (delayed, up to 40 ms) ACK of the headers.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.server.ssl_context
        if context is not None:
            # The TLS handshake happens here, in this connection's thread, so a slow
            # client cannot stall the accept loop.
            self.request.settimeout(self.timeout)
            self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        try:
            super().finish()
        finally:
            if self.server.ssl_context is not None:
                # socketserver closes the socket it accepted, which wrapping detached.
                self.connection.close()

    def do_GET(self) -> None:  # the stdlib's naming
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        path, _, query = self.path.partition("?")
        request = Request(self, path, query)
        app.begin()
        try:
            response = self._respond(app, method, request)
            request.discard_body()  # a body the route did not want
            # Unread body bytes would be taken for the next request; draining ends keep-alive.
            if request.has_unread_body() or app.draining:
                self.close_connection = True
            self._send(response)
        finally:
            app.end()

    def _respond(self, app: HttpApp, method: str, request: Request) -> Response:
        route = app.routes.get(method, {}).get(request.path)
        if route is None:
            allowed = sorted(m for m, paths in app.routes.items() if request.path in paths)
            if allowed:
                return json_response(
                    405,
                    {"status": "error", "error": f"use {' or '.join(allowed)}"},
                    (("Allow", ", ".join(allowed)),),
                )
            return json_response(404, {"status": "error", "error": f"no such path: {request.path}"})
        if request.path not in app.public_paths and not authorized(
            request.headers.get("Authorization"), app.settings.auth_token
        ):
            return json_response(
                401,
                {"status": "error", "error": "missing or wrong bearer token"},
                (("WWW-Authenticate", 'Bearer realm="tokentrace"'),),
            )
        try:
            return route(request)
        except HttpError as exc:
            return json_response(exc.status, {"status": "error", "error": str(exc)}, exc.headers)
        except Exception:  # noqa: BLE001 - a bug of ours: log it, answer 500, keep serving
            _log.exception("%s %s failed", method, request.path)
            return json_response(
                500, {"status": "error", "error": "internal error (see the server log)"}
            )

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        _log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, app: HttpApp, settings: ServeSettings) -> None:
        endpoint = settings.http_endpoint
        self.address_family = socket.AF_INET6 if endpoint.is_ipv6 else socket.AF_INET
        # Shared with the other processes of `serve --workers N` only (see ServeSettings).
        self.allow_reuse_port = settings.reuse_port
        self.app = app
        self.ssl_context = _ssl_context(settings)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((endpoint.host, endpoint.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host name up in DNS; we only need the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_idle_connections(self) -> None:
        """Wake every connection thread still waiting for a request, so it ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished, or failed its TLS handshake: not worth a traceback.
        _log.debug("connection from %s ended with an error", client_address, exc_info=True)


def _ssl_context(settings: ServeSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


class HttpServer:
    """The HTTP server bound to the configured endpoint; :attr:`port` is the actual port."""

    def __init__(self, app: HttpApp, settings: ServeSettings) -> None:
        self.app = app
        try:
            self._server = _Server(app, settings)
        except OSError as exc:
            raise OSError(
                f"cannot listen for HTTP on {settings.http_endpoint}: {exc.strerror or exc}"
            ) from None
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(_SHUTDOWN_POLL_S,),
            name="tokentrace-http",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let requests in progress finish for up to ``grace_seconds``, close."""
        deadline = time.monotonic() + grace_seconds
        self.app.draining = True
        if self._thread.is_alive():
            self._server.shutdown()
        if not self.app.wait_idle(max(deadline - time.monotonic(), 0.0)):
            _log.warning(
                "HTTP requests still in progress after %.0f s; closing anyway", grace_seconds
            )
        self._server.close_idle_connections()
        self._server.server_close()
        self.app.report_connections.close()
