"""The HTTP plumbing the receiver and the dashboard share: bearer check, query parser, responses."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tokentrace.httpkit import (
    MAX_QUERY_FIELDS,
    BadQuery,
    Response,
    authorized,
    bearer_credentials,
    json_response,
    parse_query,
    token_matches,
)


@pytest.mark.parametrize(
    "header,token,ok",
    [
        (None, None, True),
        ("anything", None, True),
        ("anything", "", True),  # an empty token is no token, as TOKENTRACE_AUTH_TOKEN="" is
        (None, "s3cret", False),
        ("Bearer s3cret", "s3cret", True),
        ("bearer s3cret", "s3cret", True),
        ("Bearer  s3cret ", "s3cret", True),
        ("  Bearer s3cret", "s3cret", True),
        ("Bearer s3cre", "s3cret", False),
        ("Bearer s3cret2", "s3cret", False),
        ("Basic s3cret", "s3cret", False),
        ("s3cret", "s3cret", False),
        ("Bearer ", "s3cret", False),
        ("Bearer", "s3cret", False),
        ("Bearers3cret", "s3cret", False),
        ("Bearer sécret", "s3cret", False),
    ],
)
def test_bearer_token(header: str | None, token: str | None, ok: bool) -> None:
    assert authorized(header, token) is ok


def test_bearer_credentials_and_token_matches() -> None:
    assert bearer_credentials("BEARER  abc ") == "abc"
    assert bearer_credentials("Basic abc") is None
    assert bearer_credentials(None) is None
    assert token_matches("t;k", "t;k")
    assert not token_matches(None, "t;k")
    assert not token_matches("t;K", "t;k")
    assert not token_matches("", "t;k")


def test_parse_query_reads_each_allowed_parameter_once() -> None:
    assert parse_query("", ("hours", "model")) == {}
    assert parse_query("hours=2&model=qwen2.5%3A7b", ("hours", "model")) == {
        "hours": "2",
        "model": "qwen2.5:7b",
    }
    assert parse_query("model=", ("hours", "model")) == {"model": ""}
    assert parse_query({"model": ["m"], "hours": []}, ("hours", "model")) == {"model": "m"}


@pytest.mark.parametrize(
    "query,allowed,message",
    [
        ("hours=1&hours=2", ("hours",), "query parameter 'hours' given more than once"),
        ("component=x", ("hours", "model"), "unknown query parameter 'component' (allowed: hours, model)"),
        ("x", (), "unknown query parameter 'x' (allowed: none)"),
        ("b=1&a=1&hours=1&hours=2", ("hours",), "unknown query parameter 'a'"),  # unknown first
        ({"window": ["1h", "7d"]}, ("window",), "query parameter 'window' given more than once"),
        ("a=1&" * 50, ("a",), f"query string has more than {MAX_QUERY_FIELDS} fields"),
    ],
)
def test_parse_query_refusals_name_the_parameter(
    query: str, allowed: tuple[str, ...], message: str
) -> None:
    with pytest.raises(BadQuery) as caught:
        parse_query(query, allowed)
    assert str(caught.value).startswith(message)


def test_parse_query_can_ignore_unknown_parameters() -> None:
    query = "window=7d&utm=x&utm=y&refresh=0"
    assert parse_query(query, ("window", "refresh"), ignore_unknown=True) == {
        "window": "7d",
        "refresh": "0",
    }
    with pytest.raises(BadQuery, match="'window' given more than once"):
        parse_query("window=1h&window=7d&utm=x", ("window",), ignore_unknown=True)
    with pytest.raises(BadQuery, match="more than 20 fields"):  # counted before any is ignored
        parse_query("utm=x&" * 21, ("window",), ignore_unknown=True)
    assert MAX_QUERY_FIELDS == 20
    assert parse_query("&".join(["utm=x"] * MAX_QUERY_FIELDS), (), ignore_unknown=True) == {}


def test_json_response() -> None:
    response = json_response(400, {"status": "error", "error": "naïve"}, (("Retry-After", "5"),))
    assert response == Response(
        400, '{"status": "error", "error": "naïve"}'.encode(), "application/json", (("Retry-After", "5"),)
    )
    at = dt.datetime(2026, 12, 7, 15, 0, tzinfo=dt.timezone.utc)
    assert json.loads(json_response(200, {"at": at}).body) == {"at": "2026-12-07 15:00:00+00:00"}
