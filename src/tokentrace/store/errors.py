"""What a database error means to tokentrace, decided in one place.

Every caller that talks to PostgreSQL (the exporter, the receiver, the HTTP reports,
the dashboard, the CLI) asks this module the same two questions, as ``psycopg_pool``
has its own error types rather than leaving each caller to sort driver errors:

* **Is the database away?** :func:`is_unavailable`: it cannot be reached, dropped the
  connection, or is not taking writes right now (a replica, a fail-over in progress).
  Worth retrying later: the exporter spools, the receiver answers ``UNAVAILABLE`` /
  503 with a retry hint, reports answer 503. Anything else PostgreSQL raised is a
  *refusal*: it answered, and said no (a query error, a constraint, a permission).
* **What do we tell people?** :func:`describe`: the error's first line with any
  password removed (:func:`redact`) — what logs, error bodies and the CLI show.

:func:`translate` turns a driver error into :class:`StoreUnavailable` or
:class:`StoreRefused` carrying that description, for callers that raise their own.
"""

from __future__ import annotations

import re

import psycopg


class StoreError(Exception):
    """A database error, described (first line, password removed)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is not taking writes now: retry later."""


class StoreRefused(StoreError):
    """The database answered and refused (a query error, a constraint, a permission)."""


# Errors that mean "the database is not there right now", not "this request is bad".
# QueryCanceled (a statement timeout) is an OperationalError, and stays one here: the
# server was too busy to finish, which a later try may not be.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
    OSError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is away (retry later) rather than refusing."""
    return isinstance(exc, UNAVAILABLE)


def describe(exc: BaseException) -> str:
    """The first line of ``exc`` (else its type's name), with any password redacted."""
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__


def translate(exc: BaseException) -> StoreError:
    """``exc`` as this module's error type, described."""
    kind = StoreUnavailable if is_unavailable(exc) else StoreRefused
    return kind(describe(exc))


_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_PASSWORD_KEYWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# libpq quotes the part of a URL it cannot decode, which may be the password.
_PERCENT_TOKEN = re.compile(r'(invalid percent-encoded token: )"[^"]*"')


def redact(text: str) -> str:
    """``text`` with any connection-string password replaced by ``***``."""
    text = _PASSWORD_IN_URL.sub(r"\1***@", text)
    text = _PERCENT_TOKEN.sub(r'\1"***"', text)
    return _PASSWORD_KEYWORD.sub(r"\1***", text)
