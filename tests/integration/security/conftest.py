"""Security tests: receivers on loopback over the test PostgreSQL (the receivers' fixtures)."""

from __future__ import annotations

from tests.integration.receiver.conftest import receiver, start_receiver  # noqa: F401
