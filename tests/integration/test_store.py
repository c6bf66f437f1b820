"""Migrations, pruning and a database that goes away, on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests import pgcontrol
from tests.helpers import query
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.exporter.spool import Spool
from tokentrace.store.embedded import embedded_dsn
from tokentrace.store.migrate import available, migrate

SEC = 1_000_000_000


def _spans(n: int, start_ns: int, model: str = "m") -> list:  # type: ignore[type-arg]
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(n):
        s = provider.get_tracer("t").start_span(
            f"{model}-{i}", start_time=start_ns + i, attributes={"gen_ai.request.model": model, "gen_ai.usage.output_tokens": 10}
        )
        s.end(end_time=start_ns + i + SEC)
    return list(memory.get_finished_spans())


@pytest.fixture
def fresh_db(dsn: str) -> Iterator[str]:
    """An empty database (no schema) on the test server."""
    name = "tt_fresh"
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    info["dbname"] = name
    yield psycopg.conninfo.make_conninfo(**info)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_migrate_twice_applies_once(fresh_db: str) -> None:
    assert migrate(fresh_db) == [m.name for m in available()]
    assert migrate(fresh_db) == []
    versions = query(fresh_db, "SELECT version FROM tokentrace.schema_migrations ORDER BY 1")
    assert [v[0] for v in versions] == [m.version for m in available()]


def test_migrate_from_two_processes_at_once(fresh_db: str, subprocess_env: dict[str, str]) -> None:
    subprocess_env["TOKENTRACE_DSN"] = fresh_db
    procs = [
        subprocess.Popen([sys.executable, "-m", "tokentrace", "migrate"], env=subprocess_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    applied = [out for out, _ in outputs if out.startswith("applied")]
    assert len(applied) == 1, outputs
    assert query(fresh_db, "SELECT count(*) FROM tokentrace.schema_migrations") == [(len(available()),)]


def test_prune_at_the_60_day_boundary(db: str) -> None:
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * SEC)
    day = 86_400 * SEC
    exporter = PostgresSpanExporter(db)
    assert exporter.export(_spans(3, now - 61 * day, "old")) == SpanExportResult.SUCCESS
    assert exporter.export(_spans(2, now - 59 * day, "kept")) == SpanExportResult.SUCCESS
    assert exporter.export(_spans(1, now, "today")) == SpanExportResult.SUCCESS
    exporter.shutdown()
    old_day = dt.datetime.fromtimestamp((now - 61 * day) / SEC, dt.timezone.utc).date()

    removed = query(db, "SELECT partition_name, day, spans FROM tokentrace.prune('60 days')")
    assert removed == [(f"spans_{old_day:%Y%m%d}", old_day, 3)]
    models = query(db, "SELECT model, count(*) FROM tokentrace.spans GROUP BY 1 ORDER BY 1")
    assert models == [("kept", 2), ("today", 1)]
    assert query(db, "SELECT count(*) FROM tokentrace.prune('60 days')") == [(0,)]
    with pytest.raises(psycopg.errors.RaiseException, match="at least 1 day"):
        query(db, "SELECT * FROM tokentrace.prune('1 hour')")


def test_prune_cli(db: str, subprocess_env: dict[str, str]) -> None:
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * SEC)
    exporter = PostgresSpanExporter(db)
    exporter.export(_spans(4, now - 40 * 86_400 * SEC, "cli-old"))
    exporter.shutdown()
    out = subprocess.run([sys.executable, "-m", "tokentrace", "prune", "--retention-days", "30"],
                         env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pruned 1 day partition(s), 4 span(s) older than 30 days" in out.stdout
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == [(0,)]


def test_database_down_then_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "own-pg"
    dsn = embedded_dsn(data_dir)
    exporter = PostgresSpanExporter(dsn, spool=Spool(tmp_path / "spool", 50 * 1024 * 1024))
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * SEC)
    assert exporter.export(_spans(5, now, "before")) == SpanExportResult.SUCCESS

    caplog.set_level(logging.ERROR, logger="tokentrace")
    pgcontrol.stop(data_dir)
    try:
        assert exporter.export(_spans(5, now + SEC, "during")) == SpanExportResult.FAILURE
        assert exporter.export(_spans(5, now + 2 * SEC, "during2")) == SpanExportResult.FAILURE
    finally:
        pgcontrol.start(data_dir)
    failures = [r for r in caplog.records if "exporting spans to PostgreSQL failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # logged once, not per batch

    try:
        assert exporter.export(_spans(5, now + 3 * SEC, "after")) == SpanExportResult.SUCCESS
        exporter.shutdown()
        # The batches that failed were spooled, and replayed before the next one.
        assert query(dsn, "SELECT model, count(*) FROM tokentrace.spans GROUP BY 1 ORDER BY 1") == [
            ("after", 5), ("before", 5), ("during", 5), ("during2", 5)
        ]
        assert exporter.spool.pending() == 0
    finally:
        # pgserver only stops the server process it started itself, not this restarted one.
        pgcontrol.stop(data_dir)


def test_unreachable_database_never_raises_and_hides_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="tokentrace")
    exporter = PostgresSpanExporter("postgresql://alice:hunter2@127.0.0.1:1/nowhere?connect_timeout=2")
    assert exporter.export(_spans(2, 1_700_000_000 * SEC)) == SpanExportResult.FAILURE
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "exporting spans to PostgreSQL failed" in text
    assert "hunter2" not in text
    exporter.shutdown()


def test_writer_recreates_a_partition_dropped_behind_its_back(db: str) -> None:
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * SEC)
    exporter = PostgresSpanExporter(db)
    assert exporter.export(_spans(2, now - 90 * 86_400 * SEC, "late-a")) == SpanExportResult.SUCCESS
    query(db, "SELECT * FROM tokentrace.prune('60 days')")
    # Same day again (a late batch): the writer's cache says the partition exists.
    assert exporter.export(_spans(2, now - 90 * 86_400 * SEC + 5 * SEC, "late-b")) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert query(db, "SELECT model, count(*) FROM tokentrace.spans GROUP BY 1") == [("late-b", 2)]


def test_many_writers_creating_the_same_new_days_at_once(db: str) -> None:
    import threading

    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        try:
            with psycopg.connect(db, autocommit=True) as conn:
                barrier.wait()
                conn.execute("SELECT tokentrace.ensure_partitions(ARRAY(SELECT d::date FROM"
                             " generate_series('2031-01-01'::date, '2031-01-20', '1 day') d))")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    days = query(db, "SELECT count(*) FROM tokentrace.span_partitions WHERE day BETWEEN '2031-01-01' AND '2031-01-20'")
    assert days == [(20,)]


def test_an_export_overlapping_an_earlier_one_stores_each_span_once(db: str) -> None:
    # The streamed COPY meets the stored spans midway: the careful path takes over.
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * SEC)
    spans = _spans(40, now, "overlap")
    exporter = PostgresSpanExporter(db)
    assert exporter.export(spans[10:20]) == SpanExportResult.SUCCESS
    assert exporter.export(list(reversed(spans))) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.stats["exported"] == 40
    assert exporter.stats["duplicates"] == 10
    assert query(db, "SELECT count(*), count(DISTINCT span_id) FROM tokentrace.spans") == [(40, 40)]


def test_write_ordered_isolates_a_row_postgresql_refuses(db: str) -> None:
    from tokentrace.store.rows import SpanData, build_row, wire_row
    from tokentrace.store.writer import SpanWriter

    start = dt.datetime(2030, 5, 1, tzinfo=dt.timezone.utc)
    base = int(start.timestamp() * SEC)
    rows = [
        wire_row(build_row(SpanData(bytes([1] * 16), i.to_bytes(8, "big"), None, f"s{i}", "CLIENT",
                                    base + i * 1000, base + i * 1000 + SEC, {"gen_ai.request.model": "w"})))
        for i in range(1, 7)
    ]
    bad = list(rows[3])
    bad[-2] = b"\x01{not json"  # the attributes column: jsonb that PostgreSQL refuses
    rows[3] = tuple(bad)
    writer = SpanWriter(db)
    result, written = writer.write_ordered(iter(rows), {start.date()})
    writer.close()
    assert written == rows
    assert (result.received, result.inserted, result.duplicates) == (6, 5, 0)
    assert [index for index, _ in result.rejected] == [3]
    assert "json" in result.rejected[0][1].lower()
    assert query(db, "SELECT name FROM tokentrace.spans ORDER BY start_time") == [
        ("s1",), ("s2",), ("s3",), ("s5",), ("s6",)
    ]
