"""Choosing the database and opening connections to it.

Every connection tokentrace opens goes through :func:`connect`, so each has the
same session name and a bounded wait for a host that is down.
"""

from __future__ import annotations

import os

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tokentrace.config import ConfigError, env_str
from tokentrace.store.embedded import embedded_dsn
from tokentrace.store.errors import describe as describe_error
from tokentrace.store.errors import redact

# libpq variables that, when set, mean "the user has pointed us at a server".
_LIBPQ_TARGET_VARS = ("PGHOST", "PGHOSTADDR", "PGSERVICE", "PGDATABASE", "PGPORT")


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: argument > ``TOKENTRACE_DSN`` > libpq ``PG*`` variables > embedded.

    An empty string means "let libpq read the ``PG*`` variables".
    """
    if dsn:
        return _parsable(dsn, "the DSN")
    from_env = env_str("TOKENTRACE_DSN")
    if from_env:
        return _parsable(from_env, "TOKENTRACE_DSN")
    if any(os.environ.get(name) for name in _LIBPQ_TARGET_VARS):
        return ""
    return embedded_dsn()


def _parsable(dsn: str, source: str) -> str:
    """``dsn`` if libpq can parse it; else a :class:`ConfigError` that shows no password.

    (libpq's own message can quote the password, e.g. a bad %-escape in it, and an
    uncaught ``ProgrammingError`` would print that in a traceback.)
    """
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"{source} is not a valid connection string: {describe_error(exc)}") from None
    return dsn


def describe(dsn: str) -> str:
    """A printable description of ``dsn`` with the password removed."""
    if not dsn:
        return "libpq defaults (PG* environment variables)"
    return redact(dsn)


DEFAULT_CONNECT_TIMEOUT_S = 10


def connect(
    dsn: str, *, autocommit: bool = False, connect_timeout_s: int | None = None
) -> psycopg.Connection[tuple[object, ...]]:
    """A connection with tokentrace's session settings.

    Without a ``connect_timeout`` (in the DSN or ``PGCONNECT_TIMEOUT``) libpq can wait
    minutes for a host that is down; 10 s keeps exporters and receivers responsive.
    ``connect_timeout_s`` overrides both, for callers that must answer sooner (a health
    check, the start-up probe).
    """
    timeout = connect_timeout_s
    if timeout is None and "connect_timeout" not in dsn and not os.environ.get("PGCONNECT_TIMEOUT"):
        timeout = DEFAULT_CONNECT_TIMEOUT_S
    if timeout is None:  # the DSN's or PGCONNECT_TIMEOUT's
        return psycopg.connect(dsn, autocommit=autocommit, application_name="tokentrace")
    return psycopg.connect(
        dsn, autocommit=autocommit, application_name="tokentrace", connect_timeout=timeout
    )
