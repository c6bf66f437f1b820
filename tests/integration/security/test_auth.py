"""The bearer token (``TOKENTRACE_AUTH_TOKEN``): compared in constant time, and every
wrong, missing or nearly-right token refused on both protocols, with nothing stored."""

from __future__ import annotations

import ast
import hmac
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.helpers import query
from tests.integration.receiver.clients import Http, grpc_export, valid_request
from tests.integration.receiver.conftest import StartReceiver
from tokentrace import httpkit
from tokentrace.dashboard import handler as dashboard

TOKEN = "tt-9f2c41d7e0b8a6-Secret"

NEAR_MISSES: dict[str, str | None] = {
    "missing": None,
    "empty": "",
    "scheme only": "Bearer",
    "scheme and space": "Bearer ",
    "wrong": "Bearer wrong-token",
    "last character changed": "Bearer " + TOKEN[:-1] + "u",
    "first character changed": "Bearer " + "u" + TOKEN[1:],
    "prefix": "Bearer " + TOKEN[:-1],
    "one character longer": "Bearer " + TOKEN + "x",
    "token twice": "Bearer " + TOKEN + TOKEN,
    "upper case": "Bearer " + TOKEN.upper(),
    "no scheme": TOKEN,
    "basic scheme": "Basic " + TOKEN,
    "token scheme": "Token " + TOKEN,
    "scheme glued": "Bearer" + TOKEN,
    "non-ASCII look-alike": "Bearer " + TOKEN.replace("e", "е"),  # Cyrillic е
}


def _compared_names(function: Callable[..., Any]) -> list[str]:
    """Names used in ``==``/``!=``/``in`` comparisons inside ``function``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
        ):
            names += [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
    return names


def _calls(function: Callable[..., Any]) -> list[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return [ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)]


@pytest.mark.parametrize(
    ("function", "secrets"),
    [
        (httpkit.authorized, {"token", "header"}),
        (httpkit.bearer_credentials, {"credentials", "header"}),
        (httpkit.token_matches, {"token", "candidate"}),
        (dashboard.authorized, {"token", "authorization", "cookie_header"}),
    ],
    ids=["bearer", "credentials", "comparison", "dashboard"],
)
def test_the_token_is_compared_in_constant_time(
    function: Callable[..., Any], secrets: set[str]
) -> None:
    """The comparison is ``hmac.compare_digest`` (its time does not depend on where the
    strings differ), and the token is never compared with ``==`` on the way."""
    if function is httpkit.token_matches:
        assert "hmac.compare_digest" in _calls(function)
        assert function.__globals__["hmac"] is hmac
    else:  # the others compare through the one comparison
        assert "hmac.compare_digest" not in _calls(function)
    assert not secrets & set(_compared_names(function)), _compared_names(function)


def test_every_page_and_both_protocols_use_the_one_check() -> None:
    from tokentrace.receiver import grpc_server, http_routes

    assert grpc_server.authorized is httpkit.authorized
    assert http_routes.authorized is httpkit.authorized
    assert "httpkit.authorized" in _calls(dashboard.authorized)
    assert "httpkit.token_matches" in _calls(dashboard.authorized)
    assert "token_matches" in _calls(httpkit.authorized)


@pytest.mark.parametrize("header", list(NEAR_MISSES.values()), ids=list(NEAR_MISSES))
def test_wrong_missing_and_near_miss_tokens_are_refused(
    start_receiver: StartReceiver, db: str, header: str | None
) -> None:
    receiver = start_receiver(auth_token=TOKEN)
    http = Http(receiver.http_port)
    headers: dict[str, Any] = {}
    if header is not None:  # sent as UTF-8 bytes when not ASCII (http.client sends latin-1)
        headers["Authorization"] = header if header.isascii() else header.encode()
    try:
        for method, path, body in (
            ("POST", "/v1/traces", valid_request(2, salt=11)),
            ("GET", "/telemetry/efficiency", None),
            ("GET", "/telemetry/60day", None),
            ("GET", "/telemetry/footprint", None),
        ):
            all_headers = {**headers, "Content-Type": "application/x-protobuf"} if body else headers
            result = http.request(method, path, body, all_headers)
            assert result.status == 401, (path, result.status)
            assert result.headers["www-authenticate"] == 'Bearer realm="tokentrace"'
            assert TOKEN not in result.body.decode("utf-8", "replace")
    finally:
        http.close()
    metadata = () if header is None else (("authorization", header),)
    if header is not None and not header.isascii():
        metadata = (("authorization-bin", header.encode()),)  # gRPC text metadata is ASCII only
    call = grpc_export(receiver.grpc_port, valid_request(2, salt=12), metadata)
    assert call.code == grpc.StatusCode.UNAUTHENTICATED
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == [(0,)]


def test_the_right_token_is_accepted_on_both_protocols(
    start_receiver: StartReceiver, db: str
) -> None:
    receiver = start_receiver(auth_token=TOKEN)
    http = Http(receiver.http_port)
    try:
        for header in ("Bearer " + TOKEN, "bearer " + TOKEN, "Bearer  " + TOKEN + " "):
            assert http.post(valid_request(1, salt=13), Authorization=header).status == 200
            assert http.get("/telemetry/efficiency", Authorization=header).status == 200
        assert http.get("/healthz").status == 200  # health checks need no token
    finally:
        http.close()
    for salt in (14, 15):
        call = grpc_export(
            receiver.grpc_port, valid_request(1, salt=salt), (("authorization", "Bearer " + TOKEN),)
        )
        assert call.code == grpc.StatusCode.OK
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == [(5,)]
