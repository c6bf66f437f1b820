"""A Citus cluster (coordinator and two workers) for this package's tests, once per session.

Skips (fails under ``CI=true``) where Citus is not installed: see tests/citus_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.citus_cluster import CitusCluster, require_citus
from tokentrace.store.migrate import migrate


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    require_citus()
    cluster = CitusCluster(workers=2, shard_count=4).start()
    try:
        migrate(cluster.dsn, require_citus=True)
        yield cluster
    finally:
        cluster.stop()


def reset(dsn: str) -> None:
    """Empty the store as ``tests/conftest.py``'s ``db`` does (day partitions dropped,
    rollups and prune's state reset); works on one node and on the cluster."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for parent in ("tokentrace.spans", "tokentrace.call_links"):
            rows = conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass",
                (parent,),
            ).fetchall()
            for (partition,) in rows:
                conn.execute(f"DROP TABLE {partition}")
        conn.execute("TRUNCATE tokentrace.span_rollups")
        conn.execute("DELETE FROM tokentrace.settings WHERE key = 'raw_horizon'")
        conn.execute("UPDATE tokentrace.settings SET value = '400' WHERE key = 'rollup_retention_days'")


@pytest.fixture
def cluster_db(citus_cluster: CitusCluster) -> str:
    """The cluster's tokentrace database, emptied."""
    reset(citus_cluster.dsn)
    return citus_cluster.dsn
