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

The alert thresholds (:mod:`tokentrace.alerts`, ``docs/alerts.md``); each also has
a ``tokentrace alerts`` flag, which wins:

=========================================  ===================================  =======
variable                                   fires when                           default
=========================================  ===================================  =======
``TOKENTRACE_ALERT_REGRESSION_RATIO``      24 h ms/token ÷ 60-day baseline ≥    1.5
``TOKENTRACE_ALERT_ERROR_RATE``            errors ÷ calls over the window ≥     0.05
``TOKENTRACE_ALERT_ERROR_WINDOW_HOURS``    (the error-rate window, hours)       1
``TOKENTRACE_ALERT_DISK_DAYS``             days until the disk cap ≤            7
``TOKENTRACE_ALERT_MIN_CALLS``             (calls a model needs before firing)  10
=========================================  ===================================  =======

Standard ``OTEL_*`` variables keep their OpenTelemetry meaning; the ``OTEL_BSP_*``
ones override the ``TOKENTRACE_BSP_*`` defaults above when set.
"""

from __future__ import annotations

import math
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
    return parse_int(raw, name, minimum=minimum)


def parse_int(raw: str, source: str, *, minimum: int = 0) -> int:
    """``raw`` as an integer of at least ``minimum``; a :class:`ConfigError` naming ``source`` otherwise."""
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{source}={raw!r} must be at least {minimum}")
    return value


def parse_float(
    raw: str,
    source: str,
    *,
    minimum: float,
    above: bool = False,
    maximum: float | None = None,
) -> float:
    """``raw`` as a finite number of at least ``minimum`` (more than it when ``above``)
    and at most ``maximum``; a :class:`ConfigError` naming ``source`` otherwise."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{source}={raw!r} is not a finite number")
    if value < minimum or (above and value == minimum):
        relation = "greater than" if above else "at least"
        raise ConfigError(f"{source}={raw!r} must be {relation} {minimum:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{source}={raw!r} must be at most {maximum:g}")
    return value


def env_float(
    name: str,
    default: float,
    *,
    minimum: float = 0.0,
    above: bool = False,
    maximum: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    """A number from the environment, or ``default`` when unset or empty (see :func:`parse_float`)."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    return parse_float(raw, name, minimum=minimum, above=above, maximum=maximum)


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


# --- alert thresholds (tokentrace.alerts) ------------------------------------------
ALERT_REGRESSION_RATIO = "TOKENTRACE_ALERT_REGRESSION_RATIO"
ALERT_ERROR_RATE = "TOKENTRACE_ALERT_ERROR_RATE"
ALERT_ERROR_WINDOW_HOURS = "TOKENTRACE_ALERT_ERROR_WINDOW_HOURS"
ALERT_DISK_DAYS = "TOKENTRACE_ALERT_DISK_DAYS"
ALERT_MIN_CALLS = "TOKENTRACE_ALERT_MIN_CALLS"
DEFAULT_ALERT_REGRESSION_RATIO = 1.5
DEFAULT_ALERT_ERROR_RATE = 0.05
DEFAULT_ALERT_ERROR_WINDOW_HOURS = 1.0
DEFAULT_ALERT_DISK_DAYS = 7.0
DEFAULT_ALERT_MIN_CALLS = 10

