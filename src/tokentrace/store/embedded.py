"""The embedded PostgreSQL: a real server from the ``pgserver`` wheel, no install.

With no DSN configured, tokentrace runs PostgreSQL itself in
``TOKENTRACE_DATA_DIR`` (default: ``<user data dir>/tokentrace/pgdata``). The server
listens only on a Unix socket inside that directory. Processes that use the same
data directory share one server; it stops when the last of them exits.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import psycopg

from tokentrace.config import env_str

_log = logging.getLogger(__name__)
DATABASE = "tokentrace"
_lock = threading.Lock()
_servers: dict[Path, Any] = {}


def default_data_dir() -> Path:
    explicit = env_str("TOKENTRACE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import platformdirs

        return platformdirs.user_data_path("tokentrace") / "pgdata"


def _import_pgserver() -> Any:
    # pgserver reads platformdirs' runtime dir at import and warns when
    # XDG_RUNTIME_DIR is unset; that is harmless for us and must not become an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


def _ensure_database(admin_uri: str) -> None:
    # Imported here: tokentrace.store.connection imports this module (the default DSN).
    from tokentrace.store.connection import connect

    with connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if exists:
            return
        try:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        except psycopg.errors.DuplicateDatabase:
            pass  # another process created it first


def embedded_dsn(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server and return a DSN for its database."""
    path = (data_dir or default_data_dir()).expanduser().resolve()
    with _lock:
        server = _servers.get(path)
        if server is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _log.info("starting embedded PostgreSQL in %s", path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = _import_pgserver().get_server(path, cleanup_mode="stop")
            _servers[path] = server
            _ensure_database(server.get_uri())
    uri: str = server.get_uri(DATABASE)
    return uri


def pg_binary(name: str) -> str:
    """A PostgreSQL program shipped with pgserver (``psql``, ``pg_dump``, …)."""
    return str(Path(_import_pgserver().__file__).parent / "pginstall" / "bin" / name)


def psql_path() -> str:
    """The psql binary shipped with pgserver (used when none is on PATH)."""
    return pg_binary("psql")


def stop_embedded() -> None:
    """Stop the servers this process started, if no other process uses them."""
    with _lock:
        for path, server in list(_servers.items()):
            server.cleanup()
            del _servers[path]
