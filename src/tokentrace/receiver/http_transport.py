"""HTTP/1.1 on the receiver's port: sockets, threads, TLS, keep-alive, request bodies
and draining. What a request is answered with is the app's (:mod:`.http_routes`).

Built on the standard library's ``ThreadingHTTPServer``: one thread per connection,
HTTP/1.1 keep-alive, no framework to install. For each request the transport builds
a :class:`Request` (headers, query, a bounded body reader that decompresses gzip and
deflate and reads chunked bodies) and sends what ``app.respond(method, request)``
returns (a :class:`tokentrace.httpkit.Response`); a body the route did not read is
read and dropped (or the connection closed), so it is not taken for the next request.

:meth:`HttpServer.stop` drains: it sets ``app.draining`` (``/healthz`` answers 503),
stops accepting, waits for requests in progress, ends idle keep-alive connections,
and closes the app (its report connections).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
import zlib
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from tokentrace.httpkit import BadQuery, Headers, Response, parse_query
from tokentrace.receiver.settings import ServeSettings

_log = logging.getLogger(__name__)
# A body refused for its size is still read (up to this much) and thrown away, so
# the client, still sending, gets the 413 instead of a reset connection.
_MAX_DISCARD_BYTES = 64 * 1024 * 1024
_IDLE_TIMEOUT_S = 60.0
_SHUTDOWN_POLL_S = 0.1  # how soon the accept loop notices a shutdown


class HttpError(Exception):
    """Ends a request with ``status``; the body is shaped by the route's error style."""

    def __init__(
        self, status: int, message: str, headers: Headers = ()
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
            return parse_query(self.query, allowed)
        except BadQuery as exc:
            raise HttpError(400, str(exc)) from None

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


class App(Protocol):
    """What the transport serves (:class:`~.http_routes.HttpApp`)."""

    draining: bool

    def respond(self, method: str, request: Request) -> Response:
        """The answer to one request; never raises (a bug is a 500 answer)."""
        ...

    def close(self) -> None:
        """Release what the app holds; called once, after the last request."""
        ...


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
        server = self.server
        path, _, query = self.path.partition("?")
        request = Request(self, path, query)
        server.begin()
        try:
            response = server.app.respond(method, request)
            request.discard_body()  # a body the route did not want
            # Unread body bytes would be taken for the next request; draining ends keep-alive.
            if request.has_unread_body() or server.app.draining:
                self.close_connection = True
            self._send(response)
        finally:
            server.end()

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

    def __init__(self, app: App, settings: ServeSettings) -> None:
        endpoint = settings.http_endpoint
        self.address_family = socket.AF_INET6 if endpoint.is_ipv6 else socket.AF_INET
        # Shared with the other processes of `serve --workers N` only (see ServeSettings).
        self.allow_reuse_port = settings.reuse_port
        self.app = app
        self.ssl_context = _ssl_context(settings)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition()
        super().__init__((endpoint.host, endpoint.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host name up in DNS; we only need the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    # --- requests in progress, for draining ------------------------------------------
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

    # --- connections, for closing the idle ones ----------------------------------------
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

    def __init__(self, app: App, settings: ServeSettings) -> None:
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
        if not self._server.wait_idle(max(deadline - time.monotonic(), 0.0)):
            _log.warning(
                "HTTP requests still in progress after %.0f s; closing anyway", grace_seconds
            )
        self._server.close_idle_connections()
        self._server.server_close()
        self.app.close()
