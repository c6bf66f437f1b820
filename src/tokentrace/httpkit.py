"""HTTP plumbing shared by every page tokentrace serves: the bearer-token check, the
query-string parser and the response type.

The receiver's port (:mod:`tokentrace.receiver.http_routes`) and the dashboard
(:mod:`tokentrace.dashboard.handler`) both answer with these, so a request's
authorization and its query parameters are decided here, once:

* :func:`authorized` — ``Authorization: Bearer <token>``, the scheme in any case,
  the token compared in constant time (:func:`token_matches`); with no token
  configured (None or empty) every request is authorized. The gRPC receiver uses
  the same function on its ``authorization`` metadata.
* :func:`parse_query` — at most :data:`MAX_QUERY_FIELDS` fields; each parameter at
  most once; parameters not in ``allowed`` refused (the receiver's reports) or
  ignored (the dashboard, whose links may carry others). Each refusal is a
  :class:`BadQuery` whose message names the parameter, for a 400 answer.
* :class:`Response` and :func:`json_response` — status, body, content type and
  extra headers; the transport adds ``Content-Length`` (and ``Connection``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

JSON_TYPE = "application/json"
# More fields than any page reads: a longer query string is refused before it is
# split into a dict the size of the request line.
MAX_QUERY_FIELDS = 20
BEARER_CHALLENGE = ("WWW-Authenticate", 'Bearer realm="tokentrace"')

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Response:
    """One answer: ``headers`` are sent after ``Content-Type`` and ``Content-Length``."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: Headers = ()


def json_response(status: int, payload: Any, headers: Headers = ()) -> Response:
    """``payload`` as UTF-8 JSON (values JSON cannot hold, such as times, as ``str``)."""
    body = json.dumps(payload, default=str, ensure_ascii=False).encode()
    return Response(status, body, JSON_TYPE, headers)


# --- authorization ---------------------------------------------------------------------
def token_matches(candidate: str | None, token: str) -> bool:
    """True when ``candidate`` is ``token``, compared in constant time.

    The time taken does not depend on where the strings differ, so it says nothing
    about the token.
    """
    return candidate is not None and hmac.compare_digest(candidate.encode(), token.encode())


def bearer_credentials(header: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer …`` header (None for another scheme)."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def authorized(header: str | None, token: str | None) -> bool:
    """True when no token is configured, or ``header`` is ``Bearer <token>``."""
    if not token:
        return True
    return token_matches(bearer_credentials(header), token)


# --- query strings ---------------------------------------------------------------------
class BadQuery(ValueError):
    """A query string a page cannot use; the message names the parameter and why."""


def parse_query(
    query: str | Mapping[str, Sequence[str]],
    allowed: Collection[str],
    *,
    ignore_unknown: bool = False,
) -> dict[str, str]:
    """The parameters in ``allowed`` as ``{name: value}`` (blank values kept as ``""``).

    ``query`` is the raw query string (percent-decoded here) or ``parse_qs`` output.
    Raises :class:`BadQuery` for more than :data:`MAX_QUERY_FIELDS` fields, for a
    parameter in ``allowed`` given more than once, and, unless ``ignore_unknown``, for
    a parameter not in ``allowed`` (reported before repetitions).
    """
    fields = parse_query_lists(query, allowed, ignore_unknown=ignore_unknown)
    return {key: values[0] for key, values in fields.items() if values}


def parse_query_lists(
    query: str | Mapping[str, Sequence[str]],
    allowed: Collection[str],
    *,
    ignore_unknown: bool = False,
    repeatable: Collection[str] = (),
    max_fields: int = MAX_QUERY_FIELDS,
) -> dict[str, list[str]]:
    """As :func:`parse_query`, each parameter's values as a list: those in ``repeatable``
    may be given more than once, and the field limit is ``max_fields``."""
    if isinstance(query, str):
        try:
            fields: Mapping[str, Sequence[str]] = parse_qs(
                query, keep_blank_values=True, max_num_fields=max_fields
            )
        except ValueError:  # the only one parse_qs raises without strict_parsing
            raise BadQuery(f"query string has more than {max_fields} fields") from None
    else:
        fields = query
    if ignore_unknown:
        fields = {key: values for key, values in fields.items() if key in allowed}
    else:
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise BadQuery(
                f"unknown query parameter {unknown[0]!r} "
                f"(allowed: {', '.join(allowed) or 'none'})"
            )
    repeated = [key for key, values in fields.items() if len(values) > 1 and key not in repeatable]
    if repeated:
        raise BadQuery(f"query parameter {repeated[0]!r} given more than once")
    return {key: list(values) for key, values in fields.items()}
