"""Rollups, reports that read them, retention that keeps them — on a real PostgreSQL.

Every figure a report gives is checked against the same figure computed here by a
raw scan of ``tokentrace.spans`` (sums and counts exactly, floats to 1e-9, p50/p95
within the histogram's stated resolution of 2^(1/32) − 1 = 2.19 %).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg.rows import dict_row

from tests.helpers import own_database, query
from tokentrace import reports, retention
from tokentrace.config import ConfigError
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.store.migrate import available, migrate
from tokentrace.store.rows import COLUMNS, BuiltRow, SpanData, build_row
from tokentrace.store.writer import SpanWriter

RESOLUTION = 2 ** (1 / 32) - 1  # the histogram's bound on p50/p95 (relative)
MODELS = ("llama3.2", "qwen2.5", "mistral", "phi3")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
UTC = dt.timezone.utc
INT_COLUMNS = ("calls", "input_tokens", "output_tokens", "loads", "errors")
FLOAT_COLUMNS = ("weighted_ms_per_token", "decode_ms_per_token", "avg_load_ms")
PCT_COLUMNS = ("p50_ms_per_token", "p95_ms_per_token")

# The reports' definitions, as a plain scan of raw spans over [lo, hi).
RAW_EFFICIENCY = """
WITH s AS (
    SELECT sp.model, sp.operation IS NOT DISTINCT FROM 'load_model' AS is_load,
           sp.input_tokens, sp.output_tokens, sp.inference_ms, sp.ms_per_token,
           sp.decode_ms_per_token, sp.load_ms, sp.duration_ms, sp.status
    FROM tokentrace.spans sp
    WHERE sp.start_time >= %(lo)s AND sp.start_time < %(hi)s AND sp.model IS NOT NULL
      AND (%(model)s::text IS NULL OR sp.model = %(model)s::text)
)
SELECT s.model,
       count(*) FILTER (WHERE NOT s.is_load) AS calls,
       coalesce(sum(s.input_tokens) FILTER (WHERE NOT s.is_load), 0)::bigint AS input_tokens,
       coalesce(sum(s.output_tokens) FILTER (WHERE NOT s.is_load), 0)::bigint AS output_tokens,
       sum(s.inference_ms) FILTER (WHERE NOT s.is_load AND s.ms_per_token IS NOT NULL)
         / nullif(sum(s.output_tokens) FILTER (WHERE NOT s.is_load AND s.ms_per_token IS NOT NULL), 0)
         AS weighted_ms_per_token,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY s.ms_per_token) FILTER (WHERE NOT s.is_load)
         AS p50_ms_per_token,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s.ms_per_token) FILTER (WHERE NOT s.is_load)
         AS p95_ms_per_token,
       sum(s.decode_ms_per_token * s.output_tokens) FILTER (WHERE NOT s.is_load AND s.decode_ms_per_token IS NOT NULL)
         / nullif(sum(s.output_tokens) FILTER (WHERE NOT s.is_load AND s.decode_ms_per_token IS NOT NULL), 0)
         AS decode_ms_per_token,
       count(*) FILTER (WHERE s.is_load) AS loads,
       avg(coalesce(s.load_ms, s.duration_ms)) FILTER (WHERE s.is_load) AS avg_load_ms,
       count(*) FILTER (WHERE s.status = 'ERROR') AS errors
FROM s
GROUP BY s.model
"""
RAW_STATS = """
SELECT count(*) AS total_measurements, count(DISTINCT sp.model) AS unique_models,
       min(sp.start_time) AS oldest_record, max(sp.start_time) AS newest_record,
       coalesce(sum(coalesce(sp.input_tokens, 0) + coalesce(sp.output_tokens, 0)), 0)::bigint AS total_tokens
FROM tokentrace.spans sp
WHERE sp.start_time >= now() - interval '60 days' AND sp.model IS NOT NULL
"""
RAW_TRENDS = """
SELECT sp.model,
       sum(sp.inference_ms) FILTER (WHERE sp.ms_per_token IS NOT NULL)
         / nullif(sum(sp.output_tokens) FILTER (WHERE sp.ms_per_token IS NOT NULL), 0) AS avg_efficiency,
       count(*) AS measurement_count,
       coalesce(sum(coalesce(sp.input_tokens, 0) + coalesce(sp.output_tokens, 0)), 0)::bigint
         AS total_tokens_processed
FROM tokentrace.spans sp
WHERE sp.start_time >= %(lo)s AND sp.start_time < %(hi)s AND sp.model IS NOT NULL
  AND sp.operation IS DISTINCT FROM 'load_model'
GROUP BY sp.model
"""
ROLLUP_KEY = "grain, bucket, model, operation"


# --- spans ----------------------------------------------------------------------
def _ns(at: dt.datetime) -> int:
    return (at - EPOCH) // dt.timedelta(microseconds=1) * 1000


def _attributes(rng: random.Random, model: str) -> tuple[dict[str, Any], float]:
    """Attributes of one random span and its duration in seconds."""
    attrs: dict[str, Any] = {"gen_ai.request.model": model, "gen_ai.provider.name": "ollama"}
    kind = rng.random()
    seconds = rng.lognormvariate(0, 1.2)
    if kind < 0.06:
        attrs["gen_ai.operation.name"] = "load_model"
    elif kind < 0.10:
        attrs["gen_ai.operation.name"] = "embeddings"
        attrs["gen_ai.usage.input_tokens"] = rng.randint(1, 500)
    elif kind < 0.13:
        attrs["gen_ai.usage.output_tokens"] = rng.randint(1, 300)  # no operation named
    else:
        attrs["gen_ai.operation.name"] = rng.choice(("chat", "chat", "text_completion"))
        attrs["gen_ai.usage.input_tokens"] = rng.randint(1, 4000)
        if rng.random() > 0.05:
            attrs["gen_ai.usage.output_tokens"] = rng.randint(0, 900)
        if rng.random() < 0.5:
            attrs["tokentrace.server.eval_duration_ns"] = int(
                seconds * rng.uniform(0.5, 0.95) * 1e9
            )
        if rng.random() < 0.08:
            attrs["tokentrace.server.load_duration_ns"] = int(seconds * rng.uniform(0, 1.2) * 1e9)
        if rng.random() < 0.02:
            seconds = 0.0  # ms/token 0: the histogram's zero bin
    return attrs, seconds


def _row(
    rng: random.Random,
    at: dt.datetime,
    model: str | None = None,
    more: Callable[[random.Random, dict[str, Any], float], None] | None = None,
) -> BuiltRow:
    """A random span at ``at``; ``more`` may add attributes (given the span's seconds)."""
    attrs, seconds = _attributes(rng, model or rng.choice(MODELS))
    if more is not None:
        more(rng, attrs, seconds)
    start = _ns(at)
    data = SpanData(
        trace_id=rng.randbytes(15) + b"\x01",
        span_id=rng.randbytes(7) + b"\x01",
        parent_span_id=None,
        name="span",
        kind="CLIENT",
        start_ns=start,
        end_ns=start + int(seconds * 1e9),
        attributes=attrs,
        status="ERROR" if rng.random() < 0.05 else "OK",
    )
    return build_row(data)


def _instants(rng: random.Random, now: dt.datetime, days: int, n: int) -> list[dt.datetime]:
    """Random instants over the last ``days`` (and a little in the future, as skewed
    clocks send), plus instants on and next to 5-minute, hour and day boundaries."""
    out = [now - dt.timedelta(seconds=rng.uniform(-1800, days * 86400)) for _ in range(n)]
    for _ in range(n // 20):
        base = now - dt.timedelta(seconds=rng.uniform(0, days * 86400))
        grain = rng.choice((300, 3600, 86400))
        edge = EPOCH + dt.timedelta(seconds=int((base - EPOCH).total_seconds()) // grain * grain)
        out.extend(edge + dt.timedelta(microseconds=d) for d in (-1, 0, 1))
    return out


def _write(dsn: str, rows: Sequence[BuiltRow], batch: int = 500) -> int:
    writer = SpanWriter(dsn)
    try:
        inserted = 0
        for i in range(0, len(rows), batch):
            result = writer.write(rows[i : i + batch])
            assert not result.rejected, result.rejected
            inserted += result.inserted
        return inserted
    finally:
        writer.close()


@pytest.fixture(scope="module")
def history(
    tmp_path_factory: pytest.TempPathFactory, dsn: str
) -> Iterator[tuple[str, dt.datetime]]:
    """A database of its own with ~5,000 random spans over 90 days, written by the writer."""
    with own_database(dsn, "tt_rollups_history") as url:
        rng = random.Random(20261124)
        now = dt.datetime.now(UTC)
        rows = [_row(rng, at) for at in _instants(rng, now, 90, 4800)]
        assert _write(url, rows) == len(rows)
        yield url, now


# --- comparing -------------------------------------------------------------------
def _by_model(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in rows}


def _close(actual: float | None, expected: float | None, rel: float) -> bool:
    if expected is None or actual is None:
        return actual is None and expected is None
    return abs(actual - expected) <= rel * abs(expected) + 1e-12


def _assert_efficiency(
    actual: list[dict[str, Any]], expected: list[dict[str, Any]], where: str
) -> None:
    got, want = _by_model(actual), _by_model(expected)
    assert set(got) == set(want), where
    for model, w in want.items():
        g = got[model]
        for col in INT_COLUMNS:
            assert g[col] == w[col], (where, model, col, g[col], w[col])
        for col in FLOAT_COLUMNS:
            assert _close(g[col], w[col], 1e-9), (where, model, col, g[col], w[col])
        for col in PCT_COLUMNS:
            assert _close(g[col], w[col], RESOLUTION + 1e-12), (where, model, col, g[col], w[col])


def _fetch(
    cur: psycopg.Cursor[dict[str, Any]], sql: str, params: Any = None
) -> list[dict[str, Any]]:
    cur.execute(sql, params)
    return cur.fetchall()


def _random_windows(
    rng: random.Random, now: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime | None]]:
    windows: list[tuple[dt.datetime, dt.datetime | None]] = []
    for length in (
        1,
        200,
        299,
        301,
        3599,
        3601,
        7 * 3600 + 17,
        86399,
        86401,
        3 * 86400 + 5,
        40 * 86400 + 999,
    ):
        for _ in range(3):
            lo = now - dt.timedelta(
                seconds=rng.uniform(0, 88 * 86400), microseconds=rng.randint(0, 999_999)
            )
            windows.append(
                (lo, lo + dt.timedelta(seconds=length, microseconds=rng.randint(0, 999_999)))
            )
    for _ in range(6):  # open-ended, as efficiency() asks
        windows.append((now - dt.timedelta(seconds=rng.uniform(60, 89 * 86400)), None))
    day = EPOCH + dt.timedelta(days=(now - EPOCH).days - 20)
    windows += [
        (day, day + dt.timedelta(days=3)),
        (day + dt.timedelta(hours=5), day + dt.timedelta(hours=29)),
        (day + dt.timedelta(minutes=35), day + dt.timedelta(minutes=40)),
        (day, None),
    ]
    return windows


# --- reports equal raw scans ------------------------------------------------------
def test_reports_equal_raw_scans(history: tuple[str, dt.datetime]) -> None:
    url, now = history
    rng = random.Random(5)
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        # One transaction: now() is the same for the reports and the raw scans.
        for lo, hi in _random_windows(rng, now):
            for model in (None, rng.choice(MODELS)):
                params = {"lo": lo, "hi": hi or dt.datetime.max.replace(tzinfo=UTC), "model": model}
                got = _fetch(
                    cur,
                    "SELECT * FROM tokentrace.efficiency_range(%(lo)s, "
                    "coalesce(%(hi)s::timestamptz, 'infinity'), %(model)s)",
                    {"lo": lo, "hi": hi, "model": model},
                )
                _assert_efficiency(
                    got, _fetch(cur, RAW_EFFICIENCY, params), f"[{lo}, {hi}) {model}"
                )

        for window in ("24 hours", "37 minutes", "7 days", "90 days"):
            got = _fetch(cur, "SELECT * FROM tokentrace.efficiency(%s::interval)", (window,))
            cur.execute("SELECT now() - %s::interval AS lo", (window,))
            lo = cur.fetchall()[0]["lo"]
            want = _fetch(
                cur,
                RAW_EFFICIENCY,
                {"lo": lo, "hi": dt.datetime.max.replace(tzinfo=UTC), "model": None},
            )
            _assert_efficiency(got, want, window)
        day_view = _fetch(cur, "SELECT * FROM tokentrace.efficiency_24h")
        assert day_view == _fetch(cur, "SELECT * FROM tokentrace.efficiency('24 hours')")
        assert len(day_view) == len(MODELS)

        stats = _fetch(cur, "SELECT * FROM tokentrace.stats_60d")[0]
        raw = _fetch(cur, RAW_STATS)[0]
        assert {k: stats[k] for k in raw} == raw
        assert stats["retention_window_days"] == 60

        cur.execute("SELECT now() AS now")
        at = cur.fetchall()[0]["now"]
        far = dt.datetime.max.replace(tzinfo=UTC)
        trends = _fetch(cur, "SELECT * FROM tokentrace.model_trends_60d")
        raw_trends = _by_model(
            _fetch(cur, RAW_TRENDS, {"lo": at - dt.timedelta(days=60), "hi": far})
        )
        assert [t["model"] for t in trends] == sorted(
            raw_trends, key=lambda m: raw_trends[m]["avg_efficiency"]
        )
        for t in trends:
            w = raw_trends[t["model"]]
            assert (t["measurement_count"], t["total_tokens_processed"]) == (
                w["measurement_count"],
                w["total_tokens_processed"],
            )
            assert _close(t["avg_efficiency"], w["avg_efficiency"], 1e-9)

        change = _by_model(_fetch(cur, "SELECT * FROM tokentrace.efficiency_change"))
        recent = _by_model(_fetch(cur, RAW_TRENDS, {"lo": at - dt.timedelta(hours=24), "hi": far}))
        base = _by_model(
            _fetch(
                cur,
                RAW_TRENDS,
                {"lo": at - dt.timedelta(days=60), "hi": at - dt.timedelta(hours=24)},
            )
        )
        assert set(change) == set(recent) | set(base)
        for model, row in change.items():
            r, b = recent[model]["avg_efficiency"], base[model]["avg_efficiency"]
            assert _close(row["recent_ms_per_token"], r, 1e-9) and _close(
                row["baseline_ms_per_token"], b, 1e-9
            )
            assert _close(row["change_ratio"], r / b, 1e-9)
            assert row["recent_calls"] == recent[model]["measurement_count"]


def test_buckets_are_utc_whatever_the_session_time_zone(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kolkata is UTC+05:30 (hour buckets in local time would be off by half an hour);
    # New York changes its offset on 2026-11-01 (a local "day" there is 25 hours).
    rng = random.Random(37)
    around = dt.datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    rows = [_row(rng, around + dt.timedelta(minutes=rng.uniform(-2000, 2000))) for _ in range(400)]
    monkeypatch.setenv("PGTZ", "Asia/Kolkata")
    _write(db, rows[:200])
    monkeypatch.setenv("PGTZ", "America/New_York")
    _write(db, rows[200:])
    monkeypatch.delenv("PGTZ")
    _assert_same_rollups(_rollups(db), _rebuilt(db))
    misaligned = query(
        db,
        "SELECT count(*) FROM tokentrace.span_rollups "
        "WHERE extract(epoch FROM bucket)::bigint % extract(epoch FROM grain)::bigint <> 0",
    )
    assert misaligned == [(0,)]
    lo, hi = around - dt.timedelta(hours=20, minutes=7), around + dt.timedelta(hours=27, minutes=3)
    params = {"lo": lo, "hi": hi, "model": None}
    for zone in ("Asia/Kolkata", "America/New_York"):
        with psycopg.connect(db) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
            got = _fetch(cur, "SELECT * FROM tokentrace.efficiency_range(%(lo)s, %(hi)s)", params)
            _assert_efficiency(got, _fetch(cur, RAW_EFFICIENCY, params), zone)


def test_windows_are_answered_from_whole_buckets(history: tuple[str, dt.datetime]) -> None:
    url, now = history
    lo = now - dt.timedelta(days=30, minutes=17, seconds=3)
    hi = now - dt.timedelta(days=2, minutes=44)
    plan = query(
        url,
        "SELECT source, grain, piece_start, piece_end FROM tokentrace.window_plan(%s, %s)",
        (lo, hi),
    )
    covered = sorted((start, end) for _, _, start, end in plan)
    assert covered[0][0] == lo and covered[-1][1] == hi
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))  # no gap, no overlap
    raw = [(end - start) for source, _, start, end in plan if source == "raw"]
    assert len(raw) == 2 and all(r < dt.timedelta(minutes=5) for r in raw)
    grains = {g for source, g, _, _ in plan if source == "rollup"}
    assert grains == {dt.timedelta(minutes=5), dt.timedelta(hours=1), dt.timedelta(days=1)}


def test_rollups_equal_a_rebuild_from_raw_spans(history: tuple[str, dt.datetime]) -> None:
    url, _ = history
    before = _rollups(url)
    with psycopg.connect(url) as conn:
        written = conn.execute(
            "SELECT tokentrace.rebuild_rollups('-infinity', 'infinity')"
        ).fetchone()
        after = _rollups(url, conn)
        conn.rollback()
    assert written == (len(before),)
    _assert_same_rollups(after, before)


# --- idempotency ------------------------------------------------------------------
def _rollups(dsn: str, conn: psycopg.Connection[Any] | None = None) -> list[tuple[Any, ...]]:
    sql = f"SELECT * FROM tokentrace.span_rollups ORDER BY {ROLLUP_KEY}"
    if conn is not None:
        return conn.execute(sql).fetchall()
    return query(dsn, sql)


def _assert_same_rollups(actual: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        for x, y in zip(a, e):
            if isinstance(y, float):
                assert _close(x, y, 1e-9), (a, e)
            else:
                assert x == y, (a, e)


def _rebuilt(dsn: str) -> list[tuple[Any, ...]]:
    """What the rollups should be, recomputed from the raw spans (and not kept)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tokentrace.rebuild_rollups('-infinity', 'infinity')")
        rows = _rollups(dsn, conn)
        conn.rollback()
    return rows


def test_a_batch_written_twice_leaves_rollups_unchanged(db: str) -> None:
    rng = random.Random(11)
    now = dt.datetime.now(UTC)
    rows = [_row(rng, at) for at in _instants(rng, now, 3, 600)]
    writer = SpanWriter(db)
    assert writer.write(rows).inserted == len(rows)
    once = _rollups(db)
    again = writer.write(rows)
    assert (again.inserted, again.duplicates) == (0, len(rows))
    assert _rollups(db) == once  # unchanged, to the bit

    fresh = [_row(rng, at) for at in _instants(rng, now, 3, 200)]
    mixed = writer.write(rows[::3] + fresh)  # a retry carrying new spans too
    assert (mixed.inserted, mixed.duplicates) == (len(fresh), len(rows[::3]))
    writer.close()
    _assert_same_rollups(_rollups(db), _rebuilt(db))
    assert query(db, "SELECT sum(spans) FROM tokentrace.span_rollups WHERE grain = '1 day'") == [
        (len(rows) + len(fresh),)
    ]


def _sdk_spans(n: int, start: dt.datetime) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(n):
        span = provider.get_tracer("t").start_span(
            "chat",
            start_time=_ns(start) + i * 1_000_000,
            attributes={
                "gen_ai.request.model": MODELS[i % 2],
                "gen_ai.operation.name": "chat",
                "gen_ai.usage.output_tokens": 10 + i,
            },
        )
        span.end(end_time=_ns(start) + i * 1_000_000 + 250_000_000)
    return list(memory.get_finished_spans())


def test_an_export_retried_by_the_sdk_counts_once(db: str) -> None:
    spans = _sdk_spans(40, dt.datetime.now(UTC) - dt.timedelta(hours=1))
    exporter = PostgresSpanExporter(db)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    once = _rollups(db)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert _rollups(db) == once
    eff = _by_model(query_dicts(db, "SELECT * FROM tokentrace.efficiency('2 hours')"))
    assert eff[MODELS[0]]["calls"] == eff[MODELS[1]]["calls"] == 20


def query_dicts(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        return _fetch(cur, sql, params)


def test_concurrent_writers_share_rollup_rows_without_deadlock(db: str) -> None:
    rng = random.Random(3)
    now = dt.datetime.now(UTC)
    # Two hours, four models: every writer's batches hit the same rollup rows.
    rows = [_row(rng, now - dt.timedelta(seconds=rng.uniform(0, 7200))) for _ in range(2400)]
    errors: list[BaseException] = []

    def work(part: list[BuiltRow], seed: int) -> None:
        writer = SpanWriter(db, max_connections=1)
        order = random.Random(seed)
        try:
            batches = [part[i : i + 50] for i in range(0, len(part), 50)]
            order.shuffle(batches)
            for batch in batches + batches[:3]:  # and a few retries
                writer.write(batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            writer.close()

    # The day partitions exist first: writers racing to create the same partition is
    # ensure_partitions()'s business, not the rollups'.
    days = sorted({r.start_time.date() for r in rows})
    query(db, "SELECT tokentrace.ensure_partitions(%s::date[])", (days,))
    threads = [threading.Thread(target=work, args=(rows[i::4], i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == [(len(rows),)]
    _assert_same_rollups(_rollups(db), _rebuilt(db))


# --- retention ----------------------------------------------------------------------
def _day_start(at: dt.datetime) -> dt.datetime:
    return EPOCH + dt.timedelta(days=(at - EPOCH).days)


def _ceil_hour(at: dt.datetime) -> dt.datetime:
    floor = EPOCH + dt.timedelta(hours=(at - EPOCH) // dt.timedelta(hours=1))
    return floor if floor == at else floor + dt.timedelta(hours=1)


def test_prune_at_the_boundary_keeps_rollups(db: str, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(17)
    now = dt.datetime.now(UTC)
    rows = [_row(rng, at) for at in _instants(rng, now, 90, 1500)]
    _write(db, rows)
    far = dt.datetime.max.replace(tzinfo=UTC)
    horizon = _day_start(now - dt.timedelta(days=60))
    per_day = dict(
        query(
            db,
            "SELECT (start_time AT TIME ZONE 'UTC')::date, count(*) FROM tokentrace.spans "
            "WHERE start_time < %s GROUP BY 1",
            (horizon,),
        )
    )
    fine_rows = dict(
        query(
            db,
            "SELECT (bucket AT TIME ZONE 'UTC')::date, count(*) FROM tokentrace.span_rollups "
            "WHERE grain = '5 minutes' AND bucket < %s GROUP BY 1",
            (horizon,),
        )
    )
    old_lo = now - dt.timedelta(days=80, minutes=23)  # mid-hour, before the horizon
    old_hi = now - dt.timedelta(days=70, minutes=41)
    before = {
        "old": query_dicts(
            db,
            RAW_EFFICIENCY,
            {
                "lo": _ceil_hour(old_lo),
                "hi": old_hi - (old_hi - EPOCH) % dt.timedelta(hours=1),
                "model": None,
            },
        ),
        "open": query_dicts(
            db, RAW_EFFICIENCY, {"lo": _ceil_hour(old_lo), "hi": far, "model": None}
        ),
        "recent": query_dicts(
            db,
            RAW_EFFICIENCY,
            {"lo": now - dt.timedelta(days=59, minutes=7), "hi": far, "model": None},
        ),
    }
    total = query(db, "SELECT count(*) FROM tokentrace.spans")[0][0]

    caplog.set_level(logging.INFO, logger="tokentrace.retention")
    result = retention.prune(db, 60, 400)
    assert [(d.day, d.spans, d.rollup_rows) for d in result.partitions] == [
        (day, per_day[day], fine_rows.get(day, 0)) for day in sorted(per_day)
    ]
    assert all(d.partition == f"spans_{d.day:%Y%m%d}" for d in result.partitions)
    assert result.spans_removed == sum(per_day.values())
    assert not [d for d in result.days if d.kind == "rollup"]
    assert result.summary().startswith(
        f"pruned {len(per_day)} day partition(s), {sum(per_day.values()):,} span(s)"
    )

    assert query(db, "SELECT min(day) FROM tokentrace.span_partitions")[0][0] >= horizon.date()
    assert query(
        db,
        "SELECT count(*) FROM tokentrace.span_rollups WHERE grain = '5 minutes' AND bucket < %s",
        (horizon,),
    ) == [(0,)]
    assert query(db, "SELECT sum(spans) FROM tokentrace.span_rollups WHERE grain = '1 day'") == [
        (total,)
    ]
    assert query(db, "SELECT sum(spans) FROM tokentrace.span_rollups WHERE grain = '1 hour'") == [
        (total,)
    ]

    # Beyond raw retention the reports still answer, from hourly and daily rollups:
    # a window starting (or ending) mid-hour there resolves to whole hours.
    got_old = query_dicts(db, "SELECT * FROM tokentrace.efficiency_range(%s, %s)", (old_lo, old_hi))
    _assert_efficiency(got_old, before["old"], "old window")
    got_open = query_dicts(db, "SELECT * FROM tokentrace.efficiency_range(%s)", (old_lo,))
    _assert_efficiency(got_open, before["open"], "open window")
    got_recent = query_dicts(
        db,
        "SELECT * FROM tokentrace.efficiency_range(%s)",
        (now - dt.timedelta(days=59, minutes=7),),
    )
    _assert_efficiency(got_recent, before["recent"], "recent window")
    sources = query(
        db, "SELECT DISTINCT source, grain FROM tokentrace.window_parts(%s, %s)", (old_lo, old_hi)
    )
    assert set(sources) == {("rollup", dt.timedelta(hours=1)), ("rollup", dt.timedelta(days=1))}

    logged = [r.getMessage() for r in caplog.records]
    assert not logged  # prune() itself is quiet; the scheduler logs (below)
    assert retention.prune(db, 60, 400).days == ()

    # Rollups have a retention of their own.
    cutoff = _day_start(now - dt.timedelta(days=70))
    expiring = dict(
        query(
            db,
            "SELECT (bucket AT TIME ZONE 'UTC')::date, count(*) FROM tokentrace.span_rollups "
            "WHERE bucket < %s GROUP BY 1",
            (cutoff,),
        )
    )
    spans_expiring = query(
        db,
        "SELECT coalesce(sum(spans), 0) FROM tokentrace.span_rollups "
        "WHERE grain = '1 day' AND bucket < %s",
        (cutoff,),
    )[0][0]
    shorter = retention.prune(db, 60, 70)
    assert [(d.kind, d.day, d.rollup_rows) for d in shorter.days] == [
        ("rollup", day, n) for day, n in sorted(expiring.items())
    ]
    assert sum(d.spans for d in shorter.days) == spans_expiring
    assert query(
        db, "SELECT count(*) FROM tokentrace.span_rollups WHERE bucket < %s", (cutoff,)
    ) == [(0,)]
    assert query(db, "SELECT tokentrace.rollup_retention_days()") == [(70,)]

    with pytest.raises(psycopg.errors.RaiseException, match="at least the raw retention"):
        query(db, "SELECT * FROM tokentrace.prune('60 days', '30 days')")
    with pytest.raises(ConfigError, match="at least the raw retention"):
        retention.prune(db, 60, 30)
    with pytest.raises(psycopg.errors.RaiseException, match="were pruned"):
        query(db, "SELECT tokentrace.rebuild_rollups(now() - interval '90 days', now())")


def test_release_keeps_the_rollups_of_days_still_stored(db: str) -> None:
    """With the rollup retention equal to the raw one, a release that runs later than
    the prune it follows (here: before any prune at all) keeps the hourly and daily
    rows of a day whose raw spans are still stored (0090); the prune then takes both."""
    rng = random.Random(91)
    now = dt.datetime.now(UTC)
    day = EPOCH + dt.timedelta(days=(now - EPOCH).days - 70)
    _write(db, [_row(rng, day + dt.timedelta(seconds=rng.uniform(0, 86_399))) for _ in range(40)])
    stored = query(db, "SELECT count(*) FROM tokentrace.spans WHERE model IS NOT NULL")[0][0]
    assert stored > 0
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE tokentrace.settings SET value = '60' WHERE key = 'rollup_retention_days'"
        )
    sums = "SELECT grain, sum(spans)::bigint FROM tokentrace.span_rollups GROUP BY 1 ORDER BY 1"
    expected = [(dt.timedelta(minutes=5), stored), (dt.timedelta(hours=1), stored),
                (dt.timedelta(days=1), stored)]  # fmt: skip
    assert query(db, sums) == expected
    assert query(db, "SELECT * FROM tokentrace_expired.release_pruned()") == []
    assert query(db, sums) == expected

    result = retention.prune(db, 60, 60)
    assert [(d.day, d.spans) for d in result.partitions] == [(day.date(), stored)]
    assert query(db, sums) == []


def test_a_late_span_for_a_pruned_day_is_counted_once(db: str) -> None:
    rng = random.Random(23)
    now = dt.datetime.now(UTC)
    old = now - dt.timedelta(days=75)
    first = [_row(rng, old + dt.timedelta(minutes=m), "phi3") for m in range(0, 240, 7)]
    _write(db, first)
    retention.prune(db, 60, 400)
    late = [_row(rng, old + dt.timedelta(minutes=100, seconds=s), "phi3") for s in range(5)]
    _write(db, late)  # the writer recreates the dropped day partition
    lo, hi = old - dt.timedelta(hours=1), old + dt.timedelta(hours=5)
    eff = _by_model(query_dicts(db, "SELECT * FROM tokentrace.efficiency_range(%s, %s)", (lo, hi)))
    # Before the raw horizon the window resolves to whole hours: [ceil(lo), floor(hi)).
    start, end = _ceil_hour(lo), hi - (hi - EPOCH) % dt.timedelta(hours=1)
    op = COLUMNS.index("operation")
    calls = [
        r
        for r in first + late
        if start <= r.start_time < end and r.values[op] not in (None, "load_model")
    ]
    assert eff["phi3"]["calls"] == len(calls)
    raw = query(db, "SELECT count(*) FROM tokentrace.spans")
    assert raw == [(len(late),)]  # the recreated partition holds the late spans only


def test_scheduler_prunes_on_schedule_and_logs_it(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(UTC)
    _write(
        db,
        [
            _row(random.Random(i), now - dt.timedelta(days=70, seconds=i), "mistral")
            for i in range(4)
        ],
    )
    caplog.set_level(logging.INFO, logger="tokentrace.retention")
    scheduler = retention.PruneScheduler(
        db, every_s=0.2, retention_days=60, rollup_retention_days=400, first_delay_s=0
    )
    scheduler.start()
    try:
        deadline = dt.datetime.now() + dt.timedelta(seconds=30)
        while scheduler.runs < 2 and dt.datetime.now() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.stop()
    assert scheduler.runs >= 2 and scheduler.failures == 0
    messages = [r.getMessage() for r in caplog.records]
    day = (now - dt.timedelta(days=70)).date()
    assert any(m.startswith(f"pruned spans_{day:%Y%m%d} ({day}): 4 spans") for m in messages), (
        messages
    )
    assert any(
        m.startswith("pruned 1 day partition(s), 4 span(s) older than 60 days") for m in messages
    )


def test_scheduler_settings() -> None:
    assert retention.prune_interval_hours(None, {}) == 24
    assert retention.prune_interval_hours(None, {"TOKENTRACE_PRUNE_INTERVAL_HOURS": "0.5"}) == 0.5
    with pytest.raises(ConfigError, match="TOKENTRACE_PRUNE_INTERVAL_HOURS"):
        retention.prune_interval_hours(None, {"TOKENTRACE_PRUNE_INTERVAL_HOURS": "daily"})
    assert retention.scheduler_from_settings("postgresql://unused", disabled=True) is None
    assert retention.scheduler_from_settings("postgresql://unused", every_hours=0) is None
    scheduler = retention.scheduler_from_settings(
        "postgresql://unused", every_hours=6, retention_days=500
    )
    assert scheduler is not None and scheduler.every_s == 6 * 3600
    assert scheduler.rollup_retention_days == 500  # never shorter than the raw retention


def test_scheduler_survives_a_database_that_is_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tokentrace.retention")
    scheduler = retention.PruneScheduler(
        "postgresql://alice:hunter2@127.0.0.1:1/x?connect_timeout=2"
    )
    assert scheduler.run_once() is None and scheduler.failures == 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "scheduled prune failed" in text and "hunter2" not in text


# --- migration --------------------------------------------------------------------
def test_upgrading_a_store_rolls_up_the_spans_it_holds(dsn: str) -> None:
    name = "tt_rollups_upgrade"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    try:
        older = [m for m in available() if m.version < 3]
        with psycopg.connect(url) as conn:  # a store as the first release left it
            conn.execute(
                "CREATE SCHEMA tokentrace; CREATE TABLE tokentrace.schema_migrations (version integer "
                "PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL "
                "DEFAULT now())"
            )
            for m in older:
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO tokentrace.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
        rng = random.Random(29)
        rows = [_row(rng, at) for at in _instants(rng, dt.datetime.now(UTC), 10, 300)]
        writer = SpanWriter(url, auto_migrate=False)
        assert writer.write(rows).inserted == len(rows)
        writer.close()
        assert "0003_rollups.sql" in migrate(url)
        _assert_same_rollups(_rollups(url), _rebuilt(url))
        assert query(
            url, "SELECT sum(spans) FROM tokentrace.span_rollups WHERE grain = '1 day'"
        ) == [(len(rows),)]
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- footprint ----------------------------------------------------------------------
def test_footprint_growth_projection_and_cap(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(31)
    now = dt.datetime.now(UTC)
    _write(db, [_row(rng, at) for at in _instants(rng, now, 20, 800)])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ANALYZE tokentrace.spans")
    with reports.report_connection(db) as conn:
        foot = reports.footprint(conn)
        exact = reports.footprint(conn, exact=True, disk_cap_gb="0.000001")
        monkeypatch.setenv("TOKENTRACE_DISK_CAP_GB", "1000")
        roomy = reports.footprint(conn)
        monkeypatch.setenv("TOKENTRACE_DISK_CAP_GB", "lots")
        with pytest.raises(reports.ReportError, match="TOKENTRACE_DISK_CAP_GB"):
            reports.footprint(conn)
    for key in ("relations", "total_bytes", "total_size", "database_bytes", "oldest_span"):
        assert key in foot  # what existed before
    relations = {r["relation"]: r for r in foot["relations"]}
    assert {"spans", "span_rollups", "settings"} <= set(relations)
    assert set(relations["spans"]) >= {
        "relation",
        "total_bytes",
        "total_size",
        "row_estimate",
        "bytes_per_day",
        "projected_bytes",
    }
    oldest, newest = query(db, "SELECT min(start_time), max(start_time) FROM tokentrace.spans")[0]
    assert (foot["oldest_span"], foot["newest_span"]) == (oldest.isoformat(), newest.isoformat())
    assert foot["row_counts_source"] == "estimated" and "exact_rows" not in relations["spans"]
    # 7 days and today of an evenly filled 20 days: about 800 × 8 / 20 spans over 7.x days.
    recent = query(
        db,
        "SELECT count(*) FROM tokentrace.spans WHERE start_time >= %s",
        (_day_start(now) - dt.timedelta(days=7),),
    )[0][0]
    elapsed = (now - (_day_start(now) - dt.timedelta(days=7))) / dt.timedelta(days=1)
    assert foot["spans_per_day"] == pytest.approx(recent / elapsed, rel=0.25)
    assert foot["bytes_per_day"] > 0
    assert foot["projected_bytes"] >= relations["spans"]["bytes_per_day"] * 60 * 0.99
    assert foot["retention_days"] == 60 and foot["rollup_retention_days"] == 400
    assert foot["disk_cap_bytes"] is None and foot["days_until_cap"] is None

    counts = {r["relation"]: r["exact_rows"] for r in exact["relations"]}
    assert counts["spans"] == query(db, "SELECT count(*) FROM tokentrace.spans")[0][0]
    assert counts["span_rollups"] == query(db, "SELECT count(*) FROM tokentrace.span_rollups")[0][0]
    assert exact["row_counts_source"] == "exact"
    assert exact["disk_cap_bytes"] == 1000 and exact["fits_within_cap"] is False
    assert exact["days_until_cap"] == 0  # already past a 1 kB cap
    assert roomy["fits_within_cap"] is True and roomy["days_until_cap"] is None

    sql_rows = query_dicts(db, "SELECT * FROM tokentrace.footprint_summary(%s)", (10 * 1024**2,))[0]
    if sql_rows["fits_within_cap"] is False:
        expected = (10 * 1024**2 - sql_rows["total_bytes"]) / sql_rows["bytes_per_day"]
        assert sql_rows["days_until_cap"] == pytest.approx(max(expected, 0))


def test_cli_prune_and_exact_footprint(db: str, subprocess_env: dict[str, str]) -> None:
    now = dt.datetime.now(UTC)
    _write(
        db,
        [_row(random.Random(i), now - dt.timedelta(days=45, seconds=i), "gemma") for i in range(6)],
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tokentrace", *args],
            check=False,
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    out = run("prune", "--retention-days", "30", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    day = (now - dt.timedelta(days=45)).date()
    assert (
        payload["removed"][0]["partition"] == f"spans_{day:%Y%m%d}"
        and payload["spans_removed"] == 6
    )
    assert payload["retention_days"] == 30 and payload["rollup_retention_days"] == 400
    assert payload["rollup_rows_removed"] >= 1  # the day's 5-minute rollups went with it
    assert run("prune", "--retention-days", "30", "--rollup-retention-days", "10").returncode == 2

    foot = run("report", "footprint", "--exact")
    assert foot.returncode == 0, foot.stderr
    assert "rows (exact)" in foot.stdout and "settles at" in foot.stdout
    eff = json.loads(run("report", "efficiency", "--hours", "2000", "--json").stdout)
    assert [r["model"] for r in eff["efficiency"]] == ["gemma"]  # from rollups, raw spans gone
