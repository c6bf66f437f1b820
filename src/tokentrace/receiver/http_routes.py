"""The routes on the receiver's HTTP port (default ``127.0.0.1:4318``): OTLP/HTTP, the
reports, health and the dashboard. Sockets, threads and bodies are the transport's
(:mod:`.http_transport`); auth, query parsing and responses are :mod:`tokentrace.httpkit`'s.

======================================  ===========================================
``POST /v1/traces``                     OTLP export: ``application/x-protobuf`` or
                                        ``application/json``, optionally
                                        ``Content-Encoding: gzip``; the answer is in
                                        the request's encoding
``GET /telemetry/efficiency``           ``?hours=24&model=…`` →
                                        ``{"status": "success", "efficiency": [...], "hours": 24}``
``GET /telemetry/60day``                ``{"status": "success", "statistics": {...}}``
``GET /telemetry/footprint``            ``{"status": "success", "footprint": {...}}``
``GET /healthz``                        200 when the database answers, else 503
``GET /``                               the dashboard (see :mod:`tokentrace.dashboard`)
======================================  ===========================================

Status codes of ``POST /v1/traces``: 200 once the spans are committed (with
``partialSuccess`` when some were refused); 400 for a body that cannot be decoded;
401 without the right ``Authorization: Bearer …`` (when ``TOKENTRACE_AUTH_TOKEN``
is set; ``/healthz`` never asks for it, and ``/`` signs in with the token); 411
without a length; 413 over the size limit (counted after decompression); 415 for
another content type or encoding; 429 + ``Retry-After`` when too many requests are
in progress; 503 + ``Retry-After`` when the database cannot be reached. Error bodies
are a ``google.rpc.Status``. The reports answer 400 with ``{"status": "error",
"error": …}`` for a bad query parameter (unknown, repeated, or more than
:data:`~tokentrace.httpkit.MAX_QUERY_FIELDS` fields) and 503 when the database is
down. Any path answers 404 if no route has it, and 405 (with ``Allow``) if routes
have it for other methods.

The reports and the dashboard read on connections kept between requests
(:mod:`tokentrace.store.pool`): a report's first query on a new connection costs
15–30 ms more than on one that has run it.

Adding a route
--------------

Write the handler as a method of :class:`HttpApp` that takes the :class:`Request`
and returns a :class:`~tokentrace.httpkit.Response`, and register it with one line
in :data:`ROUTES`::

    def alerts(self, request: Request) -> Response:
        params = request.params(("model",))  # 400 for anything else
        return self._report(lambda conn: {"status": "success", "alerts": ...})

    ROUTES = (
        ...
        Route("GET", "/telemetry/alerts", HttpApp.alerts),
    )

Inside a handler, ``raise HttpError(status, message)`` answers
``{"status": "error", "error": message}``; :meth:`HttpApp._report` runs a report on
the kept connections and turns an unreachable database into 503 and a
:class:`~tokentrace.reports.ReportError` into 400. Every route asks for the bearer
token unless registered with ``public=True``; an exception is logged and answered
500 and the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from opentelemetry.instrumentation.utils import suppress_instrumentation

from tokentrace import reports
from tokentrace.dashboard import dashboard_response
from tokentrace.httpkit import BEARER_CHALLENGE, Headers, Response, authorized, json_response
from tokentrace.receiver import protocol
from tokentrace.receiver.decode import DecodeError, decode_json, decode_protobuf
from tokentrace.receiver.http_transport import HttpError, Request
from tokentrace.receiver.ingest import Ingestor, Overloaded, StorageError, Unavailable
from tokentrace.receiver.settings import ServeSettings

_log = logging.getLogger(__name__)
_HEALTH_CONNECT_TIMEOUT_S = 3
_DB_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)

Handler = Callable[["HttpApp", Request], Response]


@dataclass(frozen=True, slots=True)
class Route:
    """``method path`` answered by ``handler``; ``public`` routes need no bearer token."""

    method: str
    path: str
    handler: Handler
    public: bool = False


def _retry_after(seconds: int) -> Headers:
    return (("Retry-After", str(seconds)),)


class HttpApp:
    """The routes and what they share (ingestor, report connections); one per server."""

    def __init__(
        self,
        ingestor: Ingestor,
        dsn: str,
        settings: ServeSettings,
        routes: tuple[Route, ...] | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.dsn = dsn
        self.settings = settings
        # Reports and the dashboard read on kept connections (tokentrace.store.pool).
        self.report_connections = reports.report_pool(dsn)
        # method -> path -> route; ROUTES unless given (read at call time: defined below).
        self.routes: dict[str, dict[str, Route]] = {}
        for route in ROUTES if routes is None else routes:
            self.routes.setdefault(route.method, {})[route.path] = route
        self.draining = False  # set by the transport when it stops; /healthz reports it

    def close(self) -> None:
        self.report_connections.close()

    def respond(self, method: str, request: Request) -> Response:
        """The route's answer, or 404/405/401; a handler's exception is a 500."""
        route = self.routes.get(method, {}).get(request.path)
        if route is None:
            allowed = sorted(m for m, paths in self.routes.items() if request.path in paths)
            if allowed:
                return json_response(
                    405,
                    {"status": "error", "error": f"use {' or '.join(allowed)}"},
                    (("Allow", ", ".join(allowed)),),
                )
            return json_response(404, {"status": "error", "error": f"no such path: {request.path}"})
        if not route.public and not authorized(
            request.headers.get("Authorization"), self.settings.auth_token
        ):
            return json_response(
                401, {"status": "error", "error": "missing or wrong bearer token"}, (BEARER_CHALLENGE,)
            )
        try:
            return route.handler(self, request)
        except HttpError as exc:
            return json_response(exc.status, {"status": "error", "error": str(exc)}, exc.headers)
        except Exception:  # noqa: BLE001 - a bug of ours: log it, answer 500, keep serving
            _log.exception("%s %s failed", method, request.path)
            return json_response(
                500, {"status": "error", "error": "internal error (see the server log)"}
            )

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
        return dashboard_response(
            request.query,
            self.dsn,
            authorization=request.headers.get("Authorization"),
            cookie=request.headers.get("Cookie"),
            auth_token=self.settings.auth_token,
            connections=self.report_connections,
        )


_RPC_CODES = {
    400: protocol.CODE_INVALID_ARGUMENT,
    401: protocol.CODE_UNAUTHENTICATED,
    429: protocol.CODE_RESOURCE_EXHAUSTED,
    503: protocol.CODE_UNAVAILABLE,
}


def _status_response(status: int, message: str, media: str, headers: Headers = ()) -> Response:
    """An OTLP error answer: a ``google.rpc.Status`` in the request's encoding."""
    content_type = protocol.PROTOBUF if media == protocol.PROTOBUF else protocol.JSON
    fallback = protocol.CODE_INTERNAL if status >= 500 else protocol.CODE_INVALID_ARGUMENT
    code = _RPC_CODES.get(status, fallback)
    return Response(
        status, protocol.status_body(code, message, content_type), content_type, headers
    )


# The routes, one line each (see "Adding a route" in the module docstring).
ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/traces", HttpApp.export_traces),
    Route("GET", "/telemetry/efficiency", HttpApp.efficiency),
    Route("GET", "/telemetry/60day", HttpApp.sixty_day),
    Route("GET", "/telemetry/footprint", HttpApp.footprint),
    Route("GET", "/healthz", HttpApp.healthz, public=True),
    # The page checks the token itself: a browser following a link cannot send an
    # Authorization header, so it also accepts the cookie its sign-in form sets.
    Route("GET", "/", HttpApp.dashboard, public=True),
)
