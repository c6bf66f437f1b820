"""Shared fixtures: a real PostgreSQL for every test that needs one.

The database is ``TOKENTRACE_TEST_DSN`` when set, otherwise an embedded server
(``pgserver``) started once per test session in a temporary directory. The schema
is migrated once; :func:`db` empties ``tokentrace.spans`` before each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tokentrace.store.embedded import embedded_dsn
from tokentrace.store.migrate import migrate


@pytest.fixture(scope="session")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated PostgreSQL for this test session."""
    explicit = os.environ.get("TOKENTRACE_TEST_DSN")
    url = explicit or embedded_dsn(tmp_path_factory.mktemp("pg") / "data")
    migrate(url)
    return url


@pytest.fixture
def db(dsn: str) -> Iterator[str]:
    """The session database with ``tokentrace.spans`` emptied first."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE tokentrace.spans")
    yield dsn


@pytest.fixture
def subprocess_env(dsn: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a child process that must write to the test database."""
    env = dict(os.environ)
    env["TOKENTRACE_DSN"] = dsn
    env["TOKENTRACE_DATA_DIR"] = str(tmp_path / "unused-embedded")
    return env

