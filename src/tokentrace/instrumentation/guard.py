"""Telemetry never changes the caller's outcome: :func:`guard`.

Helpers that run after (or around) the wrapped call go through :func:`guard`,
which logs its own failure at debug level and returns None instead of raising
into the application. The hot path (:meth:`~tokentrace.instrumentation.call.Call.finish`)
writes the same ``try`` out instead, to save a call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["guard"]

_log = logging.getLogger(__name__)

T = TypeVar("T")


def guard(func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``func(*args, **kwargs)``, or None (logged) if telemetry code itself fails."""
    try:
        return func(*args, **kwargs)
    except Exception:  # noqa: BLE001 - telemetry must never break the caller
        _log.debug(
            "tokentrace instrumentation failed in %s",
            getattr(func, "__name__", func),
            exc_info=True,
        )
        return None
