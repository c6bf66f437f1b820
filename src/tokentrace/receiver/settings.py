"""Settings of ``tokentrace serve``: argument > environment variable > default.

==============================  ====================================  ==============
flag                            environment variable                  default
==============================  ====================================  ==============
``--grpc-endpoint HOST:PORT``   ``TOKENTRACE_GRPC_ENDPOINT``          127.0.0.1:4317
``--http-endpoint HOST:PORT``   ``TOKENTRACE_HTTP_ENDPOINT``          127.0.0.1:4318
``--dsn DSN``                   ``TOKENTRACE_DSN``, ``PG*``           embedded
(none: keep secrets off argv)   ``TOKENTRACE_AUTH_TOKEN``             no auth
``--tls-cert`` / ``--tls-key``  ``TOKENTRACE_TLS_CERT`` / ``_KEY``    plain text
``--grpc-max-request-bytes``    ``TOKENTRACE_GRPC_MAX_REQUEST_BYTES`` 4MiB
``--http-max-request-bytes``    ``TOKENTRACE_HTTP_MAX_REQUEST_BYTES`` 20MiB
``--max-inflight``              ``TOKENTRACE_SERVE_MAX_INFLIGHT``     32
``--db-connections``            ``TOKENTRACE_SERVE_DB_CONNECTIONS``   4
``--grace SECONDS``             ``TOKENTRACE_SERVE_GRACE_SECONDS``    20
``--workers N``                 ``TOKENTRACE_SERVE_WORKERS``          1
==============================  ====================================  ==============

Port 0 picks a free port (the log says which). Sizes are bytes, or a number with
``KiB``/``MiB``/``GiB``; the HTTP limit applies after gzip decompression too.
``--max-inflight`` is how many export requests are handled at once; beyond it a
client is told to retry later (gRPC ``RESOURCE_EXHAUSTED`` with ``RetryInfo``, HTTP
429). A bad value raises :class:`~tokentrace.config.ConfigError` naming the flag or
variable it came from. ``--workers`` above 1 runs that many receiver processes
sharing both ports (see :mod:`tokentrace.receiver.workers`).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokentrace.config import ConfigError, env_int
from tokentrace.store.rows import DEFAULT_MAX_VALUE_CHARS

DEFAULT_GRPC_ENDPOINT = "127.0.0.1:4317"
DEFAULT_HTTP_ENDPOINT = "127.0.0.1:4318"
DEFAULT_GRPC_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_HTTP_MAX_REQUEST_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_INFLIGHT = 32
DEFAULT_DB_CONNECTIONS = 4
DEFAULT_GRACE_SECONDS = 20.0
DEFAULT_WORKERS = 1
# Each worker opens its own database connections: a typo must not exhaust PostgreSQL's.
MAX_WORKERS = 64
# grpcio cannot take a message limit at or above 2 GiB.
_MAX_REQUEST_BYTES = 2**31 - 1
_SIZE = re.compile(r"\s*(\d+)\s*(|B|KiB|MiB|GiB)\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A listening address; port 0 means "any free port"."""

    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything ``tokentrace serve`` needs to know, validated."""

    grpc_endpoint: Endpoint
    http_endpoint: Endpoint
    dsn: str | None = None  # None: resolve_dsn() decides (TOKENTRACE_DSN, PG*, embedded)
    auth_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    grpc_max_request_bytes: int = DEFAULT_GRPC_MAX_REQUEST_BYTES
    http_max_request_bytes: int = DEFAULT_HTTP_MAX_REQUEST_BYTES
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    db_connections: int = DEFAULT_DB_CONNECTIONS
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    max_value_chars: int = DEFAULT_MAX_VALUE_CHARS
    workers: int = DEFAULT_WORKERS
    # Set only in the processes of ``--workers N``: each binds the ports with
    # SO_REUSEPORT so that the kernel spreads connections over them. Otherwise off, so
    # that a second `tokentrace serve` on a port in use is an error, not a silent split.
    reuse_port: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def parse_endpoint(text: str, source: str) -> Endpoint:
    """``HOST:PORT`` or ``[IPv6]:PORT``; :class:`ConfigError` names ``source`` otherwise."""
    raw = text.strip()
    if "://" in raw:
        raise ConfigError(f"{source}={text!r}: give HOST:PORT, without a scheme")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{source}={text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{source}={text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"{source}={text!r}: write IPv6 addresses in brackets, [::1]:4317")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{source}={text!r}: port must be a number from 0 to 65535")
    return Endpoint(host, int(port_text))


def parse_size(text: str, source: str) -> int:
    """A byte count: ``1048576``, ``64KiB``, ``4MiB``, ``1GiB``."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ConfigError(f"{source}={text!r} is not a size (bytes, or a number with KiB/MiB/GiB)")
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not 1024 <= value <= _MAX_REQUEST_BYTES:
        raise ConfigError(f"{source}={text!r} must be between 1KiB and 2GiB")
    return value


def parse_count(text: str, source: str, minimum: int = 1) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{source}={text!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{source}={text!r} must be at least {minimum}")
    return value


def parse_seconds(text: str, source: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{source}={text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{source}={text!r} must be zero or more seconds")
    return value


def parse_tls_file(text: str, source: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{source}={text!r}: no such file")
    return path


# ServeSettings field -> (argparse dest, environment variable, parser, default).
# The flag is the dest with dashes: --grpc-endpoint, --tls-cert, --grace.
_OPTIONS: dict[str, tuple[str, str, Callable[[str, str], Any], Any]] = {
    "grpc_endpoint": ("grpc_endpoint", "TOKENTRACE_GRPC_ENDPOINT", parse_endpoint,
                      parse_endpoint(DEFAULT_GRPC_ENDPOINT, "default")),
    "http_endpoint": ("http_endpoint", "TOKENTRACE_HTTP_ENDPOINT", parse_endpoint,
                      parse_endpoint(DEFAULT_HTTP_ENDPOINT, "default")),
    "tls_cert": ("tls_cert", "TOKENTRACE_TLS_CERT", parse_tls_file, None),
    "tls_key": ("tls_key", "TOKENTRACE_TLS_KEY", parse_tls_file, None),
    "grpc_max_request_bytes": ("grpc_max_request_bytes", "TOKENTRACE_GRPC_MAX_REQUEST_BYTES",
                               parse_size, DEFAULT_GRPC_MAX_REQUEST_BYTES),
    "http_max_request_bytes": ("http_max_request_bytes", "TOKENTRACE_HTTP_MAX_REQUEST_BYTES",
                               parse_size, DEFAULT_HTTP_MAX_REQUEST_BYTES),
    "max_inflight": ("max_inflight", "TOKENTRACE_SERVE_MAX_INFLIGHT", parse_count, DEFAULT_MAX_INFLIGHT),
    "db_connections": ("db_connections", "TOKENTRACE_SERVE_DB_CONNECTIONS", parse_count,
                       DEFAULT_DB_CONNECTIONS),
    "grace_seconds": ("grace", "TOKENTRACE_SERVE_GRACE_SECONDS", parse_seconds, DEFAULT_GRACE_SECONDS),
    "workers": ("workers", "TOKENTRACE_SERVE_WORKERS", parse_count, DEFAULT_WORKERS),
}  # fmt: skip


def _value(args: argparse.Namespace | None, env: Mapping[str, str], field: str) -> Any:
    dest, var, parse, default = _OPTIONS[field]
    given = getattr(args, dest, None) if args is not None else None
    if given is not None:
        return parse(str(given), "--" + dest.replace("_", "-"))
    raw = env.get(var, "").strip()
    return parse(raw, var) if raw else default


def resolve(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServeSettings:
    """Validated settings from parsed arguments, then the environment, then defaults."""
    env = os.environ if environ is None else environ
    values = {field: _value(args, env, field) for field in _OPTIONS}
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError(
            "--tls-cert and --tls-key (TOKENTRACE_TLS_CERT/_KEY) go together: give both or neither"
        )
    if values["workers"] > MAX_WORKERS:
        raise ConfigError(f"--workers (TOKENTRACE_SERVE_WORKERS) must be at most {MAX_WORKERS}")
    return ServeSettings(
        **values,
        dsn=(getattr(args, "dsn", None) if args is not None else None) or None,
        auth_token=env.get("TOKENTRACE_AUTH_TOKEN", "").strip() or None,
        # The same variable and default as tokentrace.config.max_attribute_chars().
        max_value_chars=env_int(
            "TOKENTRACE_MAX_ATTRIBUTE_CHARS", DEFAULT_MAX_VALUE_CHARS, minimum=64, environ=env
        ),
    )
