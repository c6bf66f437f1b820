"""Apply the numbered SQL migrations in ``tokentrace/sql`` exactly once.

Files are named ``NNNN_name.sql`` and applied in order, each recorded in
``tokentrace.schema_migrations`` with a checksum. The whole run holds a
transaction-level advisory lock, so two processes starting together apply each file
once; running it again applies nothing. A recorded file whose text has changed is
an error: migrations are append-only.

On a database with the ``citus`` extension the same migrations run, then the schema
is laid out across the cluster and the Citus variants are (re)made, in the same
transaction: see :mod:`tokentrace.store.citus`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from tokentrace.store import citus
from tokentrace.store.connection import connect

_log = logging.getLogger(__name__)
_LOCK_KEY = 0x746F6B74  # "tokt"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped in the package, in order."""
    found = []
    for entry in resources.files("tokentrace").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS tokentrace;
CREATE TABLE IF NOT EXISTS tokentrace.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, str]:
    rows = conn.execute("SELECT version, checksum FROM tokentrace.schema_migrations").fetchall()
    return {int(str(v)): str(c) for v, c in rows}


def migrate(dsn: str, retention_days: int | None = None, *, require_citus: bool = False) -> list[str]:
    """Apply what is missing; return the names applied (empty when up to date).

    ``require_citus``: refuse (:class:`MigrationError`) a database without the
    ``citus`` extension instead of migrating it as a single node.
    """
    done: list[str] = []
    with connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        distributed = citus.has_citus(conn)
        if require_citus and not distributed:
            raise MigrationError(
                "the citus extension is not installed in this database "
                "(CREATE EXTENSION citus on the coordinator, with its workers added)"
            )
        if distributed:
            # A migration that (re)creates the rollup trigger runs as written; the
            # trigger is dropped again below, before commit. DDL inside the one long
            # transaction goes over one connection per worker.
            conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
            conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        conn.execute(_BOOTSTRAP)
        applied = _applied(conn)
        for m in available():
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.name} differs from the one applied to this database; "
                        "migrations are append-only"
                    )
                continue
            _log.info("applying migration %s", m.name)
            conn.execute(m.sql.encode())
            conn.execute(
                "INSERT INTO tokentrace.schema_migrations (version, name, checksum) "
                "VALUES (%s, %s, %s)",
                (m.version, m.name, m.checksum),
            )
            done.append(m.name)
        if distributed and (done or not citus.is_distributed(conn)):
            citus.distribute(conn)
        if retention_days is not None:
            conn.execute(
                "UPDATE tokentrace.settings SET value = %s WHERE key = 'retention_days'",
                (str(retention_days),),
            )
    return done


def is_current(dsn: str) -> bool:
    """True when every shipped migration is recorded in the database."""
    with connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('tokentrace.schema_migrations')").fetchone()
        if not exists or exists[0] is None:
            return False
        return set(_applied(conn)) >= {m.version for m in available()}


def migrate_if_needed(dsn: str) -> list[str]:
    """:func:`migrate` unless :func:`is_current` says there is nothing to apply.

    The check reads one table without the advisory lock, so processes starting
    together on a current schema do not queue for the lock.
    """
    return [] if is_current(dsn) else migrate(dsn)
