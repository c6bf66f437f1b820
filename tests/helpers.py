"""Small assertion helpers shared by the tests."""

from __future__ import annotations

from typing import Any

import psycopg


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (a helper for assertions)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()
