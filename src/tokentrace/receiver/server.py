"""Running both servers: start, log where, drain on SIGTERM/SIGINT, exit 0.

:class:`Receiver` owns one :class:`~tokentrace.store.writer.SpanWriter` (a small
pool of database connections, shared by every request of both protocols), the
OTLP/gRPC server and the HTTP server. :func:`serve` is what ``tokentrace serve``
runs: it migrates the schema if the database is reachable (if it is not, the
servers start anyway and answer "retry later" until it is), logs the addresses
and the database (password redacted), and waits for a signal.

Draining, on the first SIGTERM or SIGINT: both servers stop accepting at once —
new gRPC calls get ``UNAVAILABLE`` and new HTTP connections are refused, both of
which exporters retry — while requests in progress finish and commit, for up to
the grace period (``--grace``, default 20 s). Then connections close and the
process exits 0. A second signal exits at once: anything not yet answered was not
acknowledged, so the client sends it again.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

import psycopg

from tokentrace.receiver.grpc_server import GrpcServer, TraceService
from tokentrace.receiver.http_routes import HttpApp
from tokentrace.receiver.http_transport import HttpServer
from tokentrace.receiver.ingest import Ingestor
from tokentrace.receiver.settings import ServeSettings
from tokentrace.store.connection import describe
from tokentrace.store.migrate import is_current, migrate
from tokentrace.store.writer import SpanWriter

if TYPE_CHECKING:
    from typing_extensions import Self

_log = logging.getLogger("tokentrace.receiver")
_STARTUP_CONNECT_TIMEOUT_S = 5
# Allocations between two young-generation collections (CPython's default is 700).
_GC_YOUNG_THRESHOLD = 50_000
# How long a thread may hold the GIL while another waits for it (CPython: 5 ms).
_SWITCH_INTERVAL_S = 0.001


class Receiver:
    """The OTLP/gRPC and HTTP servers over one writer; bound on construction."""

    def __init__(self, settings: ServeSettings, dsn: str) -> None:
        self.settings = settings
        self.dsn = dsn
        self.writer = SpanWriter(dsn, max_connections=settings.db_connections)
        self.ingestor = Ingestor(
            self.writer,
            max_value_chars=settings.max_value_chars,
            max_inflight=settings.max_inflight,
            writer_threads=settings.db_connections,
        )
        try:
            self._bind_servers(settings, dsn)
        except BaseException:
            self.ingestor.close()  # its writer threads
            raise
        self._stopped = False

    def _bind_servers(self, settings: ServeSettings, dsn: str) -> None:
        self._grpc = GrpcServer(TraceService(self.ingestor, settings.auth_token), settings)
        try:
            self._http_app = HttpApp(self.ingestor, dsn, settings)
            self._http = HttpServer(self._http_app, settings)
        except BaseException:
            self._grpc.begin_stop(0).wait()
            self._grpc.close()
            raise

    @property
    def grpc_port(self) -> int:
        return self._grpc.port

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def http_app(self) -> HttpApp:
        return self._http_app

    def start(self) -> None:
        self._grpc.start()
        self._http.start()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Drain: refuse new requests, let those in progress commit, then close."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_seconds if grace_seconds is None else grace_seconds
        grpc_done = self._grpc.begin_stop(grace)
        self._http.stop(grace)
        grpc_done.wait()
        self._grpc.close()
        # Requests still waiting (an HTTP one past the grace period) get their
        # group written, or give up with the process.
        self.ingestor.close(grace)
        self.writer.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def prepare_database(dsn: str) -> bool:
    """Migrate the schema if needed; False (and a warning) if the database is unreachable."""
    try:
        with psycopg.connect(
            dsn, connect_timeout=_STARTUP_CONNECT_TIMEOUT_S, application_name="tokentrace"
        ):
            pass
        if not is_current(dsn):
            applied = migrate(dsn)
            _log.info("schema migrated: %s", ", ".join(applied) or "up to date")
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _log.warning(
            "database not reachable yet (%s); exports get 'retry later' until it is", first
        )
        return False
    return True


def log_listening(settings: ServeSettings, dsn: str, grpc_port: int, http_port: int) -> None:
    """The lines that say where ``serve`` listens (scripts read the ports from them)."""
    tls = " (TLS)" if settings.tls else ""
    scheme = "https" if settings.tls else "http"
    grpc_host = settings.grpc_endpoint.host
    http_host = settings.http_endpoint.host
    _log.info("OTLP/gRPC listening on %s:%d%s", grpc_host, grpc_port, tls)
    _log.info("OTLP/HTTP and reports listening on %s://%s:%d", scheme, http_host, http_port)
    _log.info("database: %s", describe(dsn))
    if settings.auth_token:
        _log.info("bearer token required (TOKENTRACE_AUTH_TOKEN)")


def _log_listening(receiver: Receiver) -> None:
    log_listening(receiver.settings, receiver.dsn, receiver.grpc_port, receiver.http_port)


class Signals:
    """First SIGTERM/SIGINT: drain. Second: leave at once.

    A worker of ``serve --workers N`` handles SIGTERM only, from its supervisor,
    and drains once whatever follows (``repeat_exits=False``): under a service
    manager that signals every process of the group, the supervisor's SIGTERM
    would otherwise be a worker's second one. The supervisor ends a worker at once
    with SIGKILL instead. Ctrl-C reaches the whole process group, so a worker
    ignores SIGINT and leaves that decision to its supervisor.
    """

    def __init__(
        self,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
        *,
        repeat_exits: bool = True,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.stop = threading.Event()
        self._signals = signals
        self._repeat_exits = repeat_exits
        self._on_exit = on_exit
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            if not self._repeat_exits:
                _log.info("%s received again: still draining", name)
                return
            _log.warning("second %s: exiting without draining", name)
            if self._on_exit is not None:
                self._on_exit()
            os._exit(1)
        _log.info("%s received: draining", name)
        self.stop.set()


def tune_interpreter() -> None:
    """CPython settings for a receiver process (``tokentrace serve`` only, never a
    library user's process); measured in bench/RESULTS.md ("OTLP receiver").

    Garbage collector: each span decoded allocates a few dozen containers (dicts,
    lists, ``SpanData``, rows) that live until its request is committed, tens of
    milliseconds. With the default threshold of 700 allocations they are examined
    by a young collection again and again, promoted, and then walked by full
    collections together with every long-lived object of the process (some 50,000
    after importing grpc, protobuf and psycopg). Freezing what exists after
    start-up takes those out of every collection, and a young generation of 50,000
    allocations lets most of a request's objects die before a collection sees them.
    Reference counting still frees nearly everything at once; only garbage in
    reference cycles waits a little longer.

    Switch interval: the committer's thread streams each COPY in chunks and needs
    the GIL back after each one; while a request thread decodes, it waited up to
    5 ms each time, which made one write of 512 rows take ~50 ms. At 1 ms the
    writes, and so every request waiting on them, finish sooner.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)
    sys.setswitchinterval(_SWITCH_INTERVAL_S)


def serve(settings: ServeSettings, dsn: str) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the exit status (0)."""
    signals = Signals()
    signals.install()  # first, so a signal during the database setup still ends cleanly
    try:
        prepare_database(dsn)
        return run_receiver(settings, dsn, signals.stop)
    finally:
        signals.restore()


def _always() -> bool:
    return True


def run_receiver(
    settings: ServeSettings,
    dsn: str,
    stop: threading.Event,
    *,
    ready: Callable[[Receiver], None] = _log_listening,
    wanted: Callable[[], bool] = _always,
) -> int:
    """Serve until ``stop`` is set (or ``wanted()`` turns false), drain, return 0.

    ``ready`` runs once both servers accept requests (by default it logs where).
    """
    receiver = Receiver(settings, dsn)
    try:
        receiver.start()
        tune_interpreter()
        ready(receiver)
        while not stop.wait(1.0):
            if not wanted():
                _log.warning("no longer wanted (the supervisor is gone): draining")
                break
        started = time.monotonic()
        receiver.stop()
        ingestor = receiver.ingestor
        _log.info(
            "stopped after draining for %.1f s; %d spans stored, %d rejected since start; "
            "%d writes",
            time.monotonic() - started,
            ingestor.spans_stored,
            ingestor.spans_rejected,
            ingestor.committer.groups_written,
        )
    finally:
        receiver.stop()
    return 0
