"""The distributed schema on a real Citus cluster: its layout, migrating again, the
write path's guarantees (a rolled-back batch leaves nothing, concurrent writers roll
up exactly, without deadlocks) and retention by whole days."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from tests.citus_cluster import CitusCluster
from tests.helpers import query
from tokentrace import cli
from tokentrace.store import citus
from tokentrace.store.migrate import migrate
from tokentrace.store.rows import SpanData, build_row
from tokentrace.store.writer import SpanWriter

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _ns(at: dt.datetime) -> int:
    return (at - EPOCH) // dt.timedelta(microseconds=1) * 1000


def _span(trace: int, span: int, start: dt.datetime, *, parent: int | None = None,
          model: str = "llama3.2", output_tokens: int = 64, operation: str = "chat") -> SpanData:
    return SpanData(
        trace_id=trace.to_bytes(16, "big"), span_id=span.to_bytes(8, "big"),
        parent_span_id=None if parent is None else parent.to_bytes(8, "big"),
        name=f"{operation} {model}", kind="CLIENT", start_ns=_ns(start),
        end_ns=_ns(start) + 1_024_000_000,
        attributes={"gen_ai.operation.name": operation, "gen_ai.request.model": model,
                    "gen_ai.usage.input_tokens": 16, "gen_ai.usage.output_tokens": output_tokens},
        status="OK",
    )


def _write(dsn: str, *batches: Sequence[SpanData]) -> None:
    writer = SpanWriter(dsn)
    try:
        for batch in batches:
            result = writer.write([build_row(s) for s in batch])
            assert not result.rejected, result.rejected
    finally:
        writer.close()


_ROLLUPS = (
    "SELECT grain, bucket, model, operation, spans, errors, input_tokens, output_tokens, timed_calls,"
    " timed_inference_ms, timed_output_tokens, load_ms_n, load_ms_sum, first_start, last_start,"
    " mpt_packed, inference_ms_total FROM tokentrace.span_rollups ORDER BY 1, 2, 3, 4"
)


def test_migrate_lays_out_the_cluster_and_again_changes_nothing(citus_cluster: CitusCluster) -> None:
    dsn = citus_cluster.dsn
    layout = query(dsn, "SELECT logicalrelid::regclass::text, partmethod, "
                        "column_to_column_name(logicalrelid, partkey), colocationid "
                        "FROM pg_dist_partition WHERE logicalrelid::regclass::text IN "
                        "('tokentrace.spans', 'tokentrace.call_links', 'tokentrace.span_rollups', "
                        "'tokentrace.settings', 'tokentrace.schema_migrations') ORDER BY 1")
    by_name = {r[0]: r[1:] for r in layout}
    assert by_name["tokentrace.spans"][:2] == ("h", "trace_id")
    assert by_name["tokentrace.call_links"][:2] == ("h", "trace_id")
    assert by_name["tokentrace.call_links"][2] == by_name["tokentrace.spans"][2]  # colocated
    assert by_name["tokentrace.span_rollups"][:2] == ("h", "model")
    assert by_name["tokentrace.settings"][0] == by_name["tokentrace.schema_migrations"][0] == "n"
    assert query(dsn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tokentrace.spans'::regclass "
                      "AND NOT tgisinternal") == [(0,)]
    before = query(dsn, "SELECT p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)) FROM pg_proc p "
                        "WHERE p.pronamespace = 'tokentrace'::regnamespace ORDER BY 1")
    assert migrate(dsn, require_citus=True) == []
    assert query(dsn, "SELECT p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)) FROM pg_proc p "
                      "WHERE p.pronamespace = 'tokentrace'::regnamespace ORDER BY 1") == before
    variants = dict(before)
    assert "tokentrace.rollup_staged()" in variants
    with psycopg.connect(dsn, autocommit=True) as conn:
        for signature, _ in citus.function_variants(conn):
            assert citus.MARKER in conn.execute(
                "SELECT pg_get_functiondef(to_regprocedure(%s))", (signature,)).fetchone()[0]  # type: ignore[index]


def test_migrate_citus_refuses_a_database_without_the_extension(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["migrate", "--citus", "--dsn", db]) == 1
    err = capsys.readouterr().err
    assert "tokentrace migrate: the citus extension is not installed in this database" in err


def test_a_rolled_back_batch_leaves_no_span_link_or_rollup(cluster_db: str) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    spans = [_span(1, 1, now), _span(1, 2, now, parent=1)]
    writer = SpanWriter(cluster_db)
    try:
        writer.write([build_row(spans[0])])  # the wrapper first: the call will subtract it
    finally:
        writer.close()
    kept = query(cluster_db, _ROLLUPS), query(cluster_db, "SELECT * FROM tokentrace.call_links")
    with psycopg.connect(cluster_db) as conn:
        citus.create_write_tables(conn)
        row = build_row(spans[1])
        from tokentrace.store.rows import COLUMNS, wire_rows
        from tokentrace.store.writer import _copy  # the writer's own COPY of wire rows

        _copy(conn, f"COPY {citus.INSERTED} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)",
              wire_rows([row]))
        conn.execute(f"INSERT INTO tokentrace.spans SELECT * FROM {citus.INSERTED}")
        conn.execute("SELECT tokentrace.rollup_staged()")
        assert query(cluster_db, "SELECT count(*) FROM tokentrace.spans") == [(1,)]  # not yet visible
        inside = conn.execute("SELECT count(*), bool_or(wrapper) FROM tokentrace.spans").fetchone()
        assert inside == (2, True)  # inside the batch: the first span is now a wrapper
        assert conn.execute("SELECT bool_or(has_child) FROM tokentrace.call_links").fetchone() == (True,)
        conn.rollback()
    assert (query(cluster_db, _ROLLUPS), query(cluster_db, "SELECT * FROM tokentrace.call_links")) == kept
    assert query(cluster_db, "SELECT count(*), bool_or(wrapper) FROM tokentrace.spans") == [(1, False)]


def test_four_writers_at_once_roll_up_exactly_what_one_node_does(db: str, cluster_db: str) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0) - dt.timedelta(hours=1)
    models = ("llama3.2", "qwen2.5:7b", "gpt-4o-mini")
    spans = [_span(100 + i // 2, i + 1, now + dt.timedelta(seconds=7 * i), model=models[i % 3],
                   output_tokens=2 ** (3 + i % 4)) for i in range(400)]
    # Wrapper pairs whose halves go to different writers.
    pairs = [(_span(9000 + k, 50_000 + 2 * k, now + dt.timedelta(minutes=k)),
              _span(9000 + k, 50_001 + 2 * k, now + dt.timedelta(minutes=k), parent=50_000 + 2 * k))
             for k in range(8)]
    # Each writer: its own quarter, plus half of the next one's (duplicates across
    # writers, in flight at the same time), plus one half of each pair.
    batches: list[list[list[SpanData]]] = []
    for w in range(4):
        own = spans[w * 100:(w + 1) * 100]
        overlap = spans[((w + 1) % 4) * 100:((w + 1) % 4) * 100 + 50]
        halves = [pair[w % 2] for pair in pairs[w * 2:(w + 1) * 2]] + [pair[1 - (w + 1) % 2] for pair in pairs[((w + 1) % 4) * 2:((w + 1) % 4) * 2 + 2]]
        mine = own + overlap + halves
        batches.append([mine[i:i + 40] for i in range(0, len(mine), 40)])

    errors: list[BaseException] = []

    def run(target: str, w: int) -> None:
        try:
            _write(target, *batches[w])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(cluster_db, w)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for w in range(4):
        _write(db, *batches[w])

    assert query(cluster_db, "SELECT count(*), count(*) FILTER (WHERE wrapper) FROM tokentrace.spans") == [(416, 8)]
    assert query(cluster_db, _ROLLUPS) == query(db, _ROLLUPS)
    assert query(cluster_db, "SELECT day, trace_id, span_id, start_time, has_child FROM tokentrace.call_links "
                             "ORDER BY 1, 2, 3") == query(
        db, "SELECT day, trace_id, span_id, start_time, has_child FROM tokentrace.call_links ORDER BY 1, 2, 3")


def _days_ago(days: int, hour: int = 12) -> dt.datetime:
    today = dt.datetime.now(dt.timezone.utc).replace(hour=hour, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=days)


def _shard_tables(cluster: CitusCluster, like: str) -> list[str]:
    names: list[str] = []
    for worker in cluster.workers:
        with psycopg.connect(worker.dsn(), autocommit=True) as conn:
            conn.execute("SET citus.override_table_visibility = off")
            names += [str(r[0]) for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind = 'r' ORDER BY 1", (like,))]
    return names


def test_prune_drops_whole_days_on_every_worker(
    db: str, cluster_db: str, citus_cluster: CitusCluster
) -> None:
    batches = [[_span(700 + d, 7000 + d * 10 + i, _days_ago(d) + dt.timedelta(minutes=i)) for i in range(5)]
               for d in (75, 70, 61, 59, 3, 0)]
    for target in (db, cluster_db):
        _write(target, *batches)
    old_day = _days_ago(75).strftime("%Y%m%d")
    assert _shard_tables(citus_cluster, f"spans_{old_day}_%"), "each day has shards on the workers"
    footprint_before = query(cluster_db, "SELECT total_bytes FROM tokentrace.footprint_summary()")[0][0]

    pruned = {t: query(t, "SELECT * FROM tokentrace.prune('60 days')") for t in (db, cluster_db)}
    assert pruned[cluster_db] == pruned[db]
    assert [(r[0], r[2], r[4]) for r in pruned[db] if r[4] == "raw"] == [
        (f"spans_{_days_ago(d).strftime('%Y%m%d')}", 5, "raw") for d in (75, 70, 61)]
    for d in (75, 70, 61):
        day = _days_ago(d).strftime("%Y%m%d")
        assert _shard_tables(citus_cluster, f"spans_{day}_%") == []
        assert query(cluster_db, "SELECT to_regclass(%s)", (f"tokentrace.spans_{day}",)) == [(None,)]
    assert _shard_tables(citus_cluster, f"spans_{_days_ago(59).strftime('%Y%m%d')}_%")
    for table in (_ROLLUPS, "SELECT * FROM tokentrace.stats_60d", "SELECT * FROM tokentrace.settings ORDER BY 1",
                  "SELECT count(*) FROM tokentrace.spans"):
        assert query(cluster_db, table) == query(db, table), table
    assert query(cluster_db, "SELECT total_bytes FROM tokentrace.footprint_summary()")[0][0] < footprint_before

    with pytest.raises(psycopg.errors.FeatureNotSupported, match="not available on Citus"):
        query(cluster_db, "SELECT * FROM tokentrace.prune('30 days', defer_release => true)")


def test_a_reader_role_reads_the_reports_on_the_cluster(cluster_db: str) -> None:
    _write(cluster_db, [_span(1, 1, _days_ago(0, hour=0) + dt.timedelta(hours=1))])
    rows: Any = query(cluster_db, "SELECT * FROM tokentrace.grant_reader('tt_cluster_reader')")
    assert rows[0][0] == "tt_cluster_reader" and rows[0][1] > 0 and rows[0][2] > 0
    with psycopg.connect(cluster_db, autocommit=True) as conn:
        conn.execute("SET ROLE tt_cluster_reader")
        assert conn.execute("SELECT calls FROM tokentrace.efficiency('2 days')").fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM tokentrace.spans")
