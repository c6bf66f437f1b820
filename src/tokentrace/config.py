"""Configuration: argument > environment variable > default.

Every setting tokentrace reads from the environment is read here, so a bad value
fails the same way everywhere: a :class:`ConfigError` naming the variable.

=================================  =========================================  ==========
variable                           meaning                                    default
=================================  =========================================  ==========
``TOKENTRACE_DSN``                 PostgreSQL connection string               embedded
``TOKENTRACE_DATA_DIR``            where the embedded PostgreSQL keeps data   user data dir
``TOKENTRACE_RETENTION_DAYS``      days of raw spans ``prune`` keeps          60
``TOKENTRACE_MAX_ATTRIBUTE_CHARS`` longest attribute string stored as is      65536
``TOKENTRACE_BSP_MAX_QUEUE_SIZE``  span queue of the default batch processor  262144
``TOKENTRACE_BSP_BATCH_SIZE``      spans per exported batch                   8192
``TOKENTRACE_BSP_DELAY_MS``        longest wait before a batch is exported    1000
=================================  =========================================  ==========

Standard ``OTEL_*`` variables keep their OpenTelemetry meaning; the ``OTEL_BSP_*``
ones override the ``TOKENTRACE_BSP_*`` defaults above when set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names its source."""


def env_int(
    name: str,
    default: int,
    *,
    minimum: int = 0,
    environ: Mapping[str, str] | None = None,
) -> int:
    """An integer from the environment, or ``default`` when unset or empty."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_str(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    return raw or None


def retention_days(value: int | None = None) -> int:
    if value is not None:
        if value < 1:
            raise ConfigError(f"retention must be at least 1 day, not {value}")
        return value
    return env_int("TOKENTRACE_RETENTION_DAYS", 60, minimum=1)


def max_attribute_chars() -> int:
    return env_int("TOKENTRACE_MAX_ATTRIBUTE_CHARS", 65_536, minimum=64)
