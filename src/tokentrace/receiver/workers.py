"""``tokentrace serve --workers N``: N receiver processes sharing both ports.

One receiver process decodes and builds rows under one interpreter lock, so it uses
at most about one core however many requests arrive (bench/RESULTS.md, "OTLP
receiver"). With ``--workers N`` the process started by the command becomes a
supervisor that runs no server itself:

1. it migrates the schema (once, before any worker writes);
2. it checks that both endpoints are free (a port in use is an error, exit status
   1, as with one process) and holds each one with a bound, non-listening socket
   with ``SO_REUSEPORT`` — port 0 is resolved here, once, so all workers get the
   same port, and no other program can take the port while workers start or stop;
3. it starts N workers (``python -c`` of :func:`worker_main`, the resolved settings
   sent on stdin), each a complete receiver — its own gRPC and HTTP servers, its
   own database connections and group commit — whose sockets carry
   ``SO_REUSEPORT``; the kernel hands each new connection to one of them;
4. it logs where it listens once every worker is ready, and waits.

The kernel balances *connections*, not requests: a client that keeps one gRPC
channel (one HTTP/2 connection) open sends everything to one worker. N workers help
when there are at least N client connections (several exporters, a Collector's
``sending_queue.num_consumers``, the load-balancing exporter's backends).

Shutdown: the first SIGTERM or SIGINT to the supervisor sends SIGTERM to every
worker, each drains as ``tokentrace serve`` does (finishes and commits what is in
progress, then exits 0), and the supervisor exits 0 once all have. A second signal
kills the workers (SIGKILL) and exits 1: what was not answered is sent again by the
clients. Workers ignore SIGINT (Ctrl-C reaches the whole process group; the
supervisor decides) and drain once whatever else arrives, so a service manager
that signals every process of the group still gets a drain; with systemd,
``KillMode=mixed`` signals only the supervisor. A worker that exits on its own,
or fails to start, stops the others and the supervisor exits 1, to be restarted
by whatever runs it. A worker whose supervisor disappears drains and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from tokentrace.receiver.server import (
    Receiver,
    Signals,
    log_listening,
    prepare_database,
    run_receiver,
)
from tokentrace.receiver.settings import Endpoint, ServeSettings

_log = logging.getLogger("tokentrace.receiver")
_READY = b"ready\n"
_WORKER = "from tokentrace.receiver.workers import worker_main; worker_main()"
_POLL_S = 0.5
_START_TIMEOUT_S = 60.0


class WorkerError(OSError):
    """A worker did not start (an ``OSError`` so that ``serve`` exits 1 as for a busy port)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a worker is told on its stdin."""

    settings: ServeSettings
    dsn: str
    index: int
    supervisor_pid: int
    log_level: int


# --- the supervisor ---------------------------------------------------------------
def reserve(endpoint: Endpoint, what: str) -> socket.socket:
    """A socket bound (not listening) to ``endpoint`` with SO_REUSEPORT, port resolved.

    First bound without SO_REUSEPORT, so that a port another program (or another
    ``serve --workers``) listens on is refused rather than shared.
    """
    family = socket.AF_INET6 if endpoint.is_ipv6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the servers do: a port left in TIME_WAIT by a previous run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((endpoint.host, endpoint.port))
            port = int(probe.getsockname()[1])
        held = socket.socket(family, socket.SOCK_STREAM)
        try:
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            held.bind((endpoint.host, port))
        except BaseException:
            held.close()
            raise
    except OSError as exc:
        raise OSError(f"cannot listen for {what} on {endpoint}: {exc.strerror or exc}") from None
    return held


@dataclass(slots=True)
class _Worker:
    index: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def _start_worker(config: WorkerConfig) -> _Worker:
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,  # the "ready" line; the log goes to the shared stderr
    )
    assert process.stdin is not None
    process.stdin.write(pickle.dumps(config))
    process.stdin.close()
    return _Worker(config.index, process)


def _wait_ready(worker: _Worker) -> None:
    """Block until ``worker`` says it is serving; :class:`WorkerError` if it exits first."""
    stdout = worker.process.stdout
    assert stdout is not None
    timer = threading.Timer(_START_TIMEOUT_S, worker.process.kill)
    timer.start()
    try:
        line = stdout.readline()
    finally:
        timer.cancel()
        stdout.close()
    if line != _READY:
        status = worker.process.wait()
        raise WorkerError(f"receiver worker {worker.index} did not start (exit status {status})")


def _signal_all(workers: Sequence[_Worker], sig: signal.Signals) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)


@contextlib.contextmanager
def _reserved(settings: ServeSettings) -> Iterator[tuple[int, int]]:
    grpc_socket = reserve(settings.grpc_endpoint, "OTLP/gRPC")
    try:
        http_socket = reserve(settings.http_endpoint, "HTTP")
        try:
            yield int(grpc_socket.getsockname()[1]), int(http_socket.getsockname()[1])
        finally:
            http_socket.close()
    finally:
        grpc_socket.close()


def supervise(settings: ServeSettings, dsn: str) -> int:
    """Run ``settings.workers`` receiver processes until SIGTERM/SIGINT; the exit status."""
    workers: list[_Worker] = []
    signals = Signals(on_exit=lambda: _signal_all(workers, signal.SIGKILL))
    signals.install()
    try:
        prepare_database(dsn)
        with _reserved(settings) as (grpc_port, http_port):
            shared = replace(
                settings,
                grpc_endpoint=Endpoint(settings.grpc_endpoint.host, grpc_port),
                http_endpoint=Endpoint(settings.http_endpoint.host, http_port),
                reuse_port=True,
            )
            return _run_workers(shared, dsn, workers, signals.stop)
    finally:
        _signal_all(workers, signal.SIGKILL)  # only those still running: after an error
        for worker in workers:
            worker.process.wait()
        signals.restore()


def _run_workers(
    settings: ServeSettings, dsn: str, workers: list[_Worker], stop: threading.Event
) -> int:
    level = logging.getLogger("tokentrace").getEffectiveLevel()
    for index in range(settings.workers):
        workers.append(_start_worker(WorkerConfig(settings, dsn, index, os.getpid(), level)))
    try:
        for worker in workers:
            _wait_ready(worker)
    except WorkerError:
        # Those already serving drain what they may have accepted meanwhile.
        _signal_all(workers, signal.SIGTERM)
        for worker in workers:
            worker.process.wait()
        raise
    _log_listening_shared(settings, dsn)
    failed = _wait_for_stop_or_exit(workers, stop)
    _signal_all(workers, signal.SIGTERM)
    statuses = [worker.process.wait() for worker in workers]
    if failed is not None:
        _log.error(
            "receiver worker %d exited with status %d; stopped the others",
            failed.index,
            statuses[workers.index(failed)],
        )
        return 1
    _log.info("all %d workers stopped (exit statuses %s)", len(workers), statuses)
    return 0 if all(status == 0 for status in statuses) else 1


def _wait_for_stop_or_exit(workers: Sequence[_Worker], stop: threading.Event) -> _Worker | None:
    """The worker that exited on its own, or None once ``stop`` is set."""
    while not stop.wait(_POLL_S):
        for worker in workers:
            if worker.process.poll() is not None:
                return worker
    return None


def _log_listening_shared(settings: ServeSettings, dsn: str) -> None:
    # The same lines as one process logs (scripts read the ports from them), then how many.
    log_listening(settings, dsn, settings.grpc_endpoint.port, settings.http_endpoint.port)
    _log.info("%d receiver worker processes share both ports", settings.workers)


# --- a worker ---------------------------------------------------------------------
def worker_main() -> None:
    """Entry point of one worker process (started by :func:`supervise`)."""
    config: WorkerConfig = pickle.load(sys.stdin.buffer)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s %(levelname)s %(name)s [worker {config.index}]: %(message)s",
    )
    logging.getLogger("tokentrace").setLevel(config.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signals = Signals((signal.SIGTERM,), repeat_exits=False)
    signals.install()
    try:
        status = run_receiver(
            config.settings,
            config.dsn,
            signals.stop,
            ready=_report_ready,
            wanted=lambda: os.getppid() == config.supervisor_pid,
        )
    except OSError as exc:  # a port another program took meanwhile, a TLS file gone
        _log.error("%s", exc)
        status = 1
    sys.exit(status)


def _report_ready(receiver: Receiver) -> None:
    _log.debug("serving on gRPC port %d, HTTP port %d", receiver.grpc_port, receiver.http_port)
    out = sys.stdout.buffer
    out.write(_READY)
    out.flush()
    # Anything printed later goes to the log stream; the supervisor stopped reading.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
