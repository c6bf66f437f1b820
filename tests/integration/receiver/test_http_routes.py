"""A route is one registered line in http_routes.ROUTES: served, behind the bearer
token unless public, 405 for other methods, its query parameters checked, its
exceptions a 500 that keeps the server serving."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.receiver.clients import Http, valid_request
from tests.integration.receiver.conftest import StartReceiver
from tokentrace.httpkit import Response, json_response
from tokentrace.receiver.http_routes import ROUTES, HttpApp, Route
from tokentrace.receiver.http_transport import HttpServer, Request

TOKEN = "tt-routes-9c1e"


def _echo(app: HttpApp, request: Request) -> Response:
    return json_response(200, {"status": "success", "params": request.params(("x",))})


def _broken(app: HttpApp, request: Request) -> Response:
    raise RuntimeError("a bug in a route")


@pytest.fixture
def http(start_receiver: StartReceiver, db: str) -> Iterator[Http]:
    receiver = start_receiver(auth_token=TOKEN)
    extra = (
        Route("GET", "/telemetry/echo", _echo),
        Route("GET", "/open", _echo, public=True),
        Route("GET", "/broken", _broken),
    )
    app = HttpApp(receiver.ingestor, db, receiver.settings, ROUTES + extra)
    server = HttpServer(app, receiver.settings)
    server.start()
    client = Http(server.port)
    yield client
    client.close()
    server.stop(5.0)


def test_a_registered_route_is_served_behind_the_token(http: Http) -> None:
    bearer = {"Authorization": "Bearer " + TOKEN}
    result = http.get("/telemetry/echo?x=1", **bearer)
    assert (result.status, result.json()) == (200, {"status": "success", "params": {"x": "1"}})
    assert http.get("/telemetry/echo?x=1").status == 401
    assert http.get("/open?x=2").json()["params"] == {"x": "2"}
    refused = http.get("/telemetry/echo?y=1", **bearer)
    assert refused.status == 400
    assert refused.json()["error"] == "unknown query parameter 'y' (allowed: x)"
    posted = http.request("POST", "/telemetry/echo", b"{}", bearer)
    assert (posted.status, posted.headers["allow"]) == (405, "GET")


def test_a_route_that_raises_is_a_500_and_the_rest_keeps_working(http: Http) -> None:
    bearer = {"Authorization": "Bearer " + TOKEN}
    broken = http.get("/broken", **bearer)
    assert broken.status == 500
    assert json.loads(broken.body) == {
        "status": "error",
        "error": "internal error (see the server log)",
    }
    stored = http.post(valid_request(1, salt=71), **bearer)
    assert stored.status == 200  # the registered ROUTES are all there beside the extra ones
    assert http.get("/healthz").status == 200
