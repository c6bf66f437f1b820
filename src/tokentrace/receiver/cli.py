"""``tokentrace serve``: the arguments and the entry point.

::

    tokentrace serve                                   # 127.0.0.1:4317 (gRPC), :4318 (HTTP)
    tokentrace serve --grpc-endpoint 0.0.0.0:4317 --http-endpoint 0.0.0.0:4318
    TOKENTRACE_AUTH_TOKEN=s3cret tokentrace serve --tls-cert cert.pem --tls-key key.pem
    tokentrace serve --workers 2                       # two receiver processes, same ports

Then point any OTLP exporter at it, e.g. for the Python SDK::

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_EXPORTER=otlp ...
    OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 ...

and with a token, ``OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer s3cret"``.
Every setting, its environment variable and its default are listed in
:mod:`tokentrace.receiver.settings`. With ``OTEL_METRICS_EXPORTER`` set, it also
exports the alerts as OTel gauges (:mod:`tokentrace.alert_metrics`). Exit status: 0
after a drained shutdown, 1 if a port cannot be bound or the database setup fails, 2
for a bad setting (an alert threshold, an unusable metrics exporter too).
"""

from __future__ import annotations

import argparse
import logging
import sys

from tokentrace import alert_metrics, alerts
from tokentrace.config import ConfigError
from tokentrace.receiver.server import serve
from tokentrace.receiver.settings import ServeSettings, resolve
from tokentrace.receiver.workers import supervise
from tokentrace.retention import scheduler_from_settings
from tokentrace.store.connection import resolve_dsn
from tokentrace.store.errors import describe
from tokentrace.store.migrate import MigrationError

_log = logging.getLogger("tokentrace.receiver")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options (defaults are resolved later, so the environment can apply)."""
    add = parser.add_argument
    add(
        "--grpc-endpoint",
        metavar="HOST:PORT",
        help="OTLP/gRPC address (default: $TOKENTRACE_GRPC_ENDPOINT or 127.0.0.1:4317; port 0 = any)",
    )
    add(
        "--http-endpoint",
        metavar="HOST:PORT",
        help="OTLP/HTTP and reports address (default: $TOKENTRACE_HTTP_ENDPOINT or 127.0.0.1:4318)",
    )
    add(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL connection string (default: $TOKENTRACE_DSN, then PG* variables, then embedded)",
    )
    add("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (with --tls-key)")
    add("--tls-key", metavar="PEM", help="private key of --tls-cert")
    add(
        "--grpc-max-request-bytes",
        metavar="SIZE",
        help="largest gRPC request, e.g. 4MiB (default; $TOKENTRACE_GRPC_MAX_REQUEST_BYTES)",
    )
    add(
        "--http-max-request-bytes",
        metavar="SIZE",
        help="largest HTTP body after decompression, e.g. 20MiB (default; $TOKENTRACE_HTTP_MAX_REQUEST_BYTES)",
    )
    add(
        "--max-inflight",
        metavar="N",
        help="export requests handled at once before clients are told to retry (default 32)",
    )
    add("--db-connections", metavar="N", help="database connections for writing spans (default 4)")
    add("--grace", metavar="SECONDS", help="how long to drain on SIGTERM/SIGINT (default 20)")
    add(
        "--workers",
        metavar="N",
        help="receiver processes sharing both ports (SO_REUSEPORT), each using up to a core; "
        "connections are spread over them, so N helps with at least N client connections "
        "(default: $TOKENTRACE_SERVE_WORKERS or 1; see docs/scaling.md)",
    )
    add(
        "--prune-every",
        metavar="HOURS",
        type=float,
        help="prune expired spans every HOURS (default: $TOKENTRACE_PRUNE_INTERVAL_HOURS or 24; 0 = never)",
    )
    add("--no-prune", action="store_true", help="do not prune on a schedule")
    # The bearer token is read from $TOKENTRACE_AUTH_TOKEN only: argv is visible to `ps`.


def _ensure_logging() -> None:
    # `tokentrace serve` run through the main CLI has logging set up already; when
    # run on its own, the "listening on" lines must still be shown.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logger = logging.getLogger("tokentrace")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    """Run the receiver until SIGTERM/SIGINT; returns the process exit status."""
    try:
        settings: ServeSettings = resolve(args)
        dsn = resolve_dsn(settings.dsn)
        pruner = scheduler_from_settings(
            dsn,
            every_hours=getattr(args, "prune_every", None),
            disabled=bool(getattr(args, "no_prune", False)),
        )
        # Bad alert thresholds or an unusable OTEL_METRICS_EXPORTER stop serve here.
        metrics = alert_metrics.from_environment(dsn, alerts.Thresholds.resolve())
    except ConfigError as exc:
        print(f"tokentrace serve: configuration error: {exc}", file=sys.stderr)
        return 2
    _ensure_logging()
    if metrics is not None:
        _log.info("alert metrics exported through %s", ", ".join(metrics.names))
    if pruner is not None:
        pruner.start()
    try:
        if settings.workers > 1:
            return supervise(settings, dsn)
        return serve(settings, dsn)
    except OSError as exc:  # a port in use, an unreadable TLS file
        _log.error("%s", exc)
        return 1
    except MigrationError as exc:
        _log.error("cannot prepare the database: %s", describe(exc))
        return 1
    finally:
        if pruner is not None:
            pruner.stop()
        if metrics is not None:
            metrics.shutdown()
