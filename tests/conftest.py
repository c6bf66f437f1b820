"""Shared fixtures: a real PostgreSQL for every test that needs one.

The database is ``TOKENTRACE_TEST_DSN`` when set, otherwise an embedded server
(``pgserver``) started once per test session in a temporary directory. The schema
is migrated once; :func:`db` empties ``tokentrace.spans`` before each test.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tokentrace.store.embedded import embedded_dsn

# Spans spooled while a test's database is down go to a scratch directory, never to
# the user's data directory; child processes inherit it.
os.environ.setdefault("TOKENTRACE_SPOOL_DIR", tempfile.mkdtemp(prefix="tokentrace-test-spool-"))
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
    """The session database with ``tokentrace.spans`` emptied (partitions dropped) first,
    and the rollups and the retention state prune() leaves behind reset with it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Dropping the day partitions (not just emptying them) keeps tests that count
        # partitions independent of each other.
        conn.execute(
            "DO $$ DECLARE p record; BEGIN"
            " FOR p IN SELECT partition FROM tokentrace.span_partitions LOOP"
            " EXECUTE format('DROP TABLE %s', p.partition); END LOOP;"
            # The link rows of those spans (0100) go with them, as prune() drops them.
            " FOR p IN SELECT inhrelid::regclass AS partition FROM pg_inherits"
            " WHERE inhparent = to_regclass('tokentrace.call_links') LOOP"
            " EXECUTE format('DROP TABLE %s', p.partition); END LOOP; END $$"
        )
        conn.execute(
            "DO $$ BEGIN IF to_regclass('tokentrace.span_rollups') IS NOT NULL THEN"
            " TRUNCATE tokentrace.span_rollups;"
            " DELETE FROM tokentrace.settings WHERE key = 'raw_horizon';"
            " UPDATE tokentrace.settings SET value = '400' WHERE key = 'rollup_retention_days';"
            " END IF; END $$"
        )
    yield dsn


@pytest.fixture
def subprocess_env(dsn: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a child process that must write to the test database."""
    env = dict(os.environ)
    env["TOKENTRACE_DSN"] = dsn
    env["TOKENTRACE_DATA_DIR"] = str(tmp_path / "unused-embedded")
    return env



def _reset_tracing_globals() -> None:
    # The API lets a process set the global provider once; tests need a fresh one each.
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    from tokentrace import pipeline

    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    pipeline._configured = None


@pytest.fixture
def configured(db: str) -> Iterator[str]:
    """``tokentrace.configure(db)`` on a fresh global tracer provider; yields the DSN."""
    import tokentrace

    _reset_tracing_globals()
    provider = tokentrace.configure(db)
    yield db
    provider.shutdown()
    _reset_tracing_globals()
