"""``GET /`` as a plain function: query and headers in, status, headers and body out.

:func:`dashboard_response` knows nothing of the server that calls it (the receiver's
HTTP port, or any other), so it is easy to mount and to test; it answers a
:class:`tokentrace.httpkit.Response`, and :func:`handle_dashboard` the same answer as
a ``(status, headers, body)`` tuple for servers of your own.

Query parameters: ``window`` (``1h``, ``24h``, ``7d``, ``60d``; default ``24h``),
``model`` (one model; default all), ``refresh`` (seconds between in-place
refreshes, 0 for none; default 30), ``partial=1`` (only the data region, for the
page's own refresh). Others are ignored; more than
:data:`~tokentrace.httpkit.MAX_QUERY_FIELDS` fields, or one of these given twice, is
a 400 (:func:`tokentrace.httpkit.parse_query`).

Access: with a bearer token configured (``TOKENTRACE_AUTH_TOKEN``), the page wants
either ``Authorization: Bearer <token>`` or the ``tokentrace_token`` cookie, which
its sign-in form sets (a browser following a link cannot send the header). Both
are compared in constant time (:func:`tokentrace.httpkit.authorized`,
:func:`~tokentrace.httpkit.token_matches`). Every answer carries a
Content-Security-Policy that allows no request anywhere except back to this server,
so the page cannot leak data even if a value slipped through escaping.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import psycopg

from tokentrace import httpkit, reports
from tokentrace.dashboard import page
from tokentrace.dashboard.data import DEFAULT_WINDOW, WINDOWS, Window
from tokentrace.dashboard.svg import esc
from tokentrace.store.pool import ConnectionPool

_log = logging.getLogger(__name__)

HTML_TYPE = "text/html; charset=utf-8"
TOKEN_COOKIE = "tokentrace_token"
TZ_COOKIE = "tt_tz"
MAX_MODEL_CHARS = 512
_PARAMETERS = ("window", "model", "refresh", "partial")
_RETRY_S = 10
_DB_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)
_NO_SCHEMA = (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction)

Answer = tuple[int, dict[str, str], bytes]  # handle_dashboard's (status, headers, body)


class BadRequest(ValueError):
    """A query parameter the page cannot use (the message says which and why)."""


@dataclass(frozen=True)
class Params:
    window: Window
    model: str | None
    refresh_s: int
    partial: bool


def parse_query(query: Mapping[str, Sequence[str]] | str) -> Params:
    """The page's parameters from a query string or a ``parse_qs`` mapping (``BadRequest`` if unusable)."""
    try:
        given = httpkit.parse_query(query, _PARAMETERS, ignore_unknown=True)
    except httpkit.BadQuery as exc:
        raise BadRequest(str(exc)) from None
    window_key = given.get("window") or DEFAULT_WINDOW.key
    if window_key not in WINDOWS:
        raise BadRequest(f"window must be one of {', '.join(WINDOWS)}, not {window_key!r}")
    model = given.get("model", "").strip() or None
    if model is not None and len(model) > MAX_MODEL_CHARS:
        raise BadRequest(f"model name longer than {MAX_MODEL_CHARS} characters")
    refresh_text = given.get("refresh")
    refresh = page.DEFAULT_REFRESH_S
    if refresh_text not in (None, ""):
        if not refresh_text.isdigit() or not (int(refresh_text) == 0 or 5 <= int(refresh_text) <= 3600):
            raise BadRequest(f"refresh must be 0 (off) or 5 to 3600 seconds, not {refresh_text!r}")
        refresh = int(refresh_text)
    partial = given.get("partial", "") in ("1", "true")
    return Params(WINDOWS[window_key], model, refresh, partial)


def cookies(header: str | None) -> dict[str, str]:
    """The name → value pairs of a ``Cookie`` header (values percent-decoded)."""
    found: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in found:
            found[name] = unquote(value.strip().strip('"'))
    return found


def authorized(authorization: str | None, cookie_header: str | None, token: str | None) -> bool:
    """True when no token is configured, or the bearer header or the cookie carries it."""
    if not token or httpkit.authorized(authorization, token):
        return True
    return httpkit.token_matches(cookies(cookie_header).get(TOKEN_COOKIE), token)


def security_headers(nonce: str) -> dict[str, str]:
    """Headers for every answer: no caching, no framing, and no request beyond this server."""
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; "
        "style-src 'unsafe-inline'; "
        "img-src data:; "
        "connect-src 'self'; "
        "form-action 'self'; "
        "base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


def _answer(status: int, body: str, nonce: str, extra: Mapping[str, str] | None = None) -> httpkit.Response:
    headers = {**security_headers(nonce), **(extra or {})}
    return httpkit.Response(status, body.encode("utf-8"), HTML_TYPE, tuple(headers.items()))


def handle_dashboard(
    query: Mapping[str, Sequence[str]] | str,
    dsn: str,
    *,
    authorization: str | None = None,
    cookie: str | None = None,
    auth_token: str | None = None,
    now: dt.datetime | None = None,
    connections: ConnectionPool | None = None,
) -> Answer:
    """Answer ``GET /``: ``(status, headers, body)``; ``headers`` includes ``Content-Type``.

    The same answer as :func:`dashboard_response` (see there for the arguments), for
    a server of your own that takes a header dict.
    """
    response = dashboard_response(
        query, dsn, authorization=authorization, cookie=cookie, auth_token=auth_token,
        now=now, connections=connections,
    )  # fmt: skip
    return response.status, {"Content-Type": response.content_type, **dict(response.headers)}, response.body


def dashboard_response(
    query: Mapping[str, Sequence[str]] | str,
    dsn: str,
    *,
    authorization: str | None = None,
    cookie: str | None = None,
    auth_token: str | None = None,
    now: dt.datetime | None = None,
    connections: ConnectionPool | None = None,
) -> httpkit.Response:
    """Answer ``GET /``, with the security headers (:func:`security_headers`) on every answer.

    ``query`` is the raw query string or ``urllib.parse.parse_qs`` output;
    ``authorization`` and ``cookie`` are the request's headers of those names;
    ``auth_token`` the configured bearer token (None: the page is open);
    ``connections`` kept report connections to read with (None: a new one to ``dsn``).
    """
    nonce = secrets.token_urlsafe(16)
    if not authorized(authorization, cookie, auth_token):
        return _answer(401, page.login_page(nonce), nonce, dict([httpkit.BEARER_CHALLENGE]))
    try:
        params = parse_query(query)
    except BadRequest as exc:
        links = " ".join(f'<a href="/?window={w}">{w}</a>' for w in WINDOWS)
        return _answer(400, page.message_page("Bad request", f"{esc(exc)}. Try {links}.", nonce=nonce), nonce)
    zone = cookies(cookie).get(TZ_COOKIE)

    def render(conn: psycopg.Connection[Any]) -> str:
        return page.render_page(
            conn, window=params.window, model=params.model, refresh_s=params.refresh_s,
            now=now, tz=zone, nonce=nonce, partial=params.partial,
        )  # fmt: skip

    try:
        if connections is None:
            with reports.report_connection(dsn) as conn:
                body = render(conn)
        else:
            body = connections.run(render)
    except _DB_DOWN:
        text = f"The database cannot be reached; this page tries again every {_RETRY_S} s."
        return _answer(503, page.message_page("Database unavailable", text, nonce=nonce, retry_s=_RETRY_S),
                       nonce, {"Retry-After": str(_RETRY_S)})  # fmt: skip
    except _NO_SCHEMA:
        text = ("The database has no (or an older) tokentrace schema. Run <code>tokentrace migrate</code>, "
                "or restart <code>tokentrace serve</code>, which migrates on start.")  # fmt: skip
        return _answer(503, page.message_page("Schema missing", text, nonce=nonce, retry_s=_RETRY_S), nonce,
                       {"Retry-After": str(_RETRY_S)})  # fmt: skip
    except reports.ReportError as exc:  # a setting the reports cannot use, such as the disk cap
        text = f"{esc(exc)}. Fix the setting and restart <code>tokentrace serve</code>."
        return _answer(500, page.message_page("Report settings", text, nonce=nonce), nonce)
    except psycopg.errors.QueryCanceled:
        _log.warning("dashboard reports exceeded the statement timeout (TOKENTRACE_REPORT_TIMEOUT_MS)")
        text = ("The reports took longer than the statement timeout (<code>TOKENTRACE_REPORT_TIMEOUT_MS</code>). "
                "Try a shorter window.")  # fmt: skip
        return _answer(503, page.message_page("Reports timed out", text, nonce=nonce), nonce,
                       {"Retry-After": str(_RETRY_S)})  # fmt: skip
    return _answer(200, body, nonce)
