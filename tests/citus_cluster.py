"""A real Citus cluster for tests: a coordinator and workers on this machine.

The nodes are PostgreSQL servers started from pgserver's own binaries
(``pginstall/bin``) with ``shared_preload_libraries = 'citus'``, each in a data
directory of its own, listening on 127.0.0.1 (the nodes talk to each other over TCP)
and a Unix socket in that directory. The coordinator is registered with
``citus_set_coordinator_host`` and the workers with ``citus_add_node``.

Citus is not a dependency of tokentrace; tests get it from ``../shared/citus/``
(``install.sh PYTHON`` unpacks it into that interpreter's pgserver). Where it is not
installed the tests that need it skip, saying how to get it, except under ``CI=true``,
where a missing Citus is a failure: CI (``.ci/run``) installs it and must run them.

PostgreSQL refuses to run as root; as root the servers run as the ``pgserver``
system user (the one pgserver itself creates and uses).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

DATABASE = "tokentrace"
SUPERUSER = "postgres"
_RUN_AS = "pgserver"
HOW_TO_GET = (
    "Citus is not installed into this interpreter's pgserver; install it with "
    "`../shared/citus/install.sh <python>` from the checkout (see ../shared/citus/README.md), "
    "or build Citus 13 for pgserver's PostgreSQL 16"
)


def pginstall() -> Path:
    from tokentrace.store.embedded import pg_binary

    return Path(pg_binary("postgres")).parent.parent


def citus_available() -> bool:
    """Whether pgserver's PostgreSQL can load Citus."""
    root = pginstall()
    return (root / "lib" / "postgresql" / "citus.so").exists() and (
        root / "share" / "postgresql" / "extension" / "citus.control"
    ).exists()


def require_citus() -> None:
    """Skip the calling test (fail it under ``CI=true``) when Citus is missing."""
    import pytest

    if citus_available():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {HOW_TO_GET}", pytrace=False)
    pytest.skip(HOW_TO_GET)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One PostgreSQL server of the cluster."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.data_dir = root / name
        self.port = _free_port()

    def dsn(self, dbname: str = DATABASE) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"


class CitusCluster:
    """A coordinator and ``workers`` workers; :meth:`start` then :meth:`stop`.

    ``shard_count`` sets ``citus.shard_count`` on the coordinator: on a two-core
    machine the default 32 shards per table make every statement fan out to 32
    connections, so tests use few.
    """

    def __init__(self, root: Path | None = None, *, workers: int = 2, shard_count: int = 4) -> None:
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="tokentrace-citus-"))
        self.shard_count = shard_count
        self.coordinator = Node(self.root, "coordinator")
        self.workers = [Node(self.root, f"worker{i + 1}") for i in range(workers)]
        self._started: list[Node] = []

    @property
    def nodes(self) -> list[Node]:
        return [self.coordinator, *self.workers]

    @property
    def dsn(self) -> str:
        """The coordinator's tokentrace database: what a user points tokentrace at."""
        return self.coordinator.dsn()

    # --- running the PostgreSQL programs --------------------------------------------
    def _as_server_user(self, command: Sequence[str]) -> list[str]:
        if os.geteuid() != 0:
            return list(command)
        return ["runuser", "-u", _RUN_AS, "--", *command]

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        command = self._as_server_user([str(pginstall() / "bin" / program), *args])
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(_RUN_AS)
            # The server user must reach the data directories (mkdtemp makes 0700).
            self.root.chmod(0o755)
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _init(self, node: Node) -> None:
        self._run("initdb", "-D", str(node.data_dir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        settings = {
            "shared_preload_libraries": "'citus'",
            "listen_addresses": "'127.0.0.1'",
            "port": str(node.port),
            "unix_socket_directories": f"'{node.data_dir}'",
            "max_connections": "200",
            "fsync": "off",  # a test cluster: durability is not what is under test
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            "max_prepared_transactions": "100",  # Citus's two-phase commit across nodes
            "citus.shard_count": str(self.shard_count),
            "citus.log_remote_commands": "off",
        }
        with (node.data_dir / "postgresql.auto.conf").open("a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def _start_node(self, node: Node, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                self._run("pg_ctl", "-D", str(node.data_dir), "-w", "-t", "60",
                          "-l", str(node.data_dir / "log"), "start")
                self._started.append(node)
                return
            except RuntimeError as exc:
                log = self.log(node)
                if attempt + 1 == attempts:
                    raise RuntimeError(f"{exc}\n{node.name}'s log:\n{log[-3000:]}") from None
                # The free port found earlier may have been taken since (other test
                # sessions share the machine): another one.
                node.port = _free_port()
                with (node.data_dir / "postgresql.auto.conf").open("a") as conf:
                    conf.write(f"port = {node.port}\n")

    def log(self, node: Node) -> str:
        path = node.data_dir / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- the cluster ----------------------------------------------------------------
    def start(self) -> CitusCluster:
        self._prepare_root()
        try:
            for node in self.nodes:
                self._init(node)
                self._start_node(node)
                with psycopg.connect(node.dsn("postgres"), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')
                with psycopg.connect(node.dsn(), autocommit=True) as conn:
                    conn.execute("CREATE EXTENSION citus")
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,))
                for worker in self.workers:
                    conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute("SELECT count(*) FROM citus_get_active_worker_nodes()")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        for node in reversed(self._started):
            try:
                self._run("pg_ctl", "-D", str(node.data_dir), "-w", "-m", "fast", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        self._started.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> CitusCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
