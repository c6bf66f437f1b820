"""Small helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from tokentrace.store.migrate import migrate


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (a helper for assertions)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


@contextmanager
def own_database(dsn: str, name: str, *, migrated: bool = True) -> Iterator[str]:
    """A database ``name`` of its own on ``dsn``'s server (made afresh, migrated unless
    told not to), dropped afterwards."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name)))
        conn.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))
    url = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name)))


def require_optional(module: str, what: str) -> Any:
    """``module`` imported, for a test of an optional dependency (an extra).

    Missing, the test is skipped with the reason, except under CI (``CI=true``, as
    GitHub Actions and most CI services set it), where the extra is installed and a
    skip would hide a test that never ran: there it fails.
    """
    import importlib
    import os

    import pytest

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{what} needs {module!r} ({exc}); pip install -e '.[test]'"
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)
