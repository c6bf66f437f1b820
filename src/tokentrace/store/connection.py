"""Choosing the database and opening connections to it."""

from __future__ import annotations

import os

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tokentrace.config import ConfigError, env_str, redact
from tokentrace.store.embedded import embedded_dsn

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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{source} is not a valid connection string: {redact(first)}") from None
    return dsn


def describe(dsn: str) -> str:
    """A printable description of ``dsn`` with the password removed."""
    if not dsn:
        return "libpq defaults (PG* environment variables)"
    return redact(dsn)


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """A connection with tokentrace's session settings.

    Without a ``connect_timeout`` (in the DSN or ``PGCONNECT_TIMEOUT``) libpq can wait
    minutes for a host that is down; 10 s keeps exporters and receivers responsive.
    """
    if "connect_timeout" not in dsn and not os.environ.get("PGCONNECT_TIMEOUT"):
        return psycopg.connect(
            dsn, autocommit=autocommit, application_name="tokentrace", connect_timeout=10
        )
    return psycopg.connect(dsn, autocommit=autocommit, application_name="tokentrace")
