"""``efficiency_series_range()`` from rollups (migration 0080) against the raw series.

Buckets that line up with a rollup grain are answered from rollup rows; every figure
must equal ``efficiency_series_raw()`` (0020's raw scan) over the same range: counts
and sums exactly, floats to 1e-9, p50/p95 within the histogram's 2.19 %. Ranges that
do not line up are answered by the raw scan itself.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.helpers import own_database
from tests.integration.test_rollups import RESOLUTION, _close, _instants, _row, _write
from tokentrace.store.migrate import migrate
from tokentrace.store.rows import BuiltRow

UTC = dt.timezone.utc
PCT = ("p50_ms_per_token", "p95_ms_per_token")
FLOATS = (
    "weighted_ms_per_token", "prefill_ms_per_token", "decode_ms_per_token", "avg_load_ms",
    "load_ms", "inference_ms",
)  # fmt: skip
INTS = ("calls", "input_tokens", "output_tokens", "loads", "errors")


def _prefill(rng: random.Random, attrs: dict[str, Any], seconds: float) -> None:
    """Half the calls also report the server's prompt evaluation time (prefill)."""
    if attrs.get("gen_ai.usage.input_tokens") and rng.random() < 0.5:
        attrs["tokentrace.server.prompt_eval_duration_ns"] = int(seconds * rng.uniform(0.05, 0.4) * 1e9)


def _span(rng: random.Random, at: dt.datetime) -> BuiltRow:
    return _row(rng, at, more=_prefill)


@pytest.fixture(scope="module")
def store(dsn: str) -> Iterator[tuple[str, dt.datetime]]:
    """A database of its own: ~3,000 spans over 12 days, half of the calls with prefill."""
    with own_database(dsn, "tt_series_rollups") as url:
        rng = random.Random(20261203)
        now = dt.datetime.now(UTC)
        rows = [_span(rng, at) for at in _instants(rng, now, 12, 2800)]
        assert _write(url, rows) == len(rows)
        yield url, now


def _series(url: str, function: str, start: Any, end: Any, bucket: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            f"SELECT * FROM tokentrace.{function}(%s, %s, %s::interval)", (start, end, bucket)
        ).fetchall()


def _assert_equal(rollup: list[dict[str, Any]], raw: list[dict[str, Any]]) -> None:
    assert [(r["bucket_start"], r["model"]) for r in rollup] == [
        (r["bucket_start"], r["model"]) for r in raw
    ]
    for mine, want in zip(rollup, raw):
        where = (want["bucket_start"], want["model"])
        for key in INTS:
            assert mine[key] == want[key], (where, key)
        for key in FLOATS:
            assert _close(mine[key], want[key], 1e-9), (where, key, mine[key], want[key])
        for key in PCT:
            assert _close(mine[key], want[key], RESOLUTION), (where, key, mine[key], want[key])


def _floor(at: dt.datetime, grain: dt.timedelta) -> dt.datetime:
    origin = dt.datetime(2000, 1, 1, tzinfo=UTC)
    return at - (at - origin) % grain


DAY, HOUR, FIVE = dt.timedelta(days=1), dt.timedelta(hours=1), dt.timedelta(minutes=5)


@pytest.mark.parametrize(
    ("start_grain", "back", "end", "bucket"),
    [
        (DAY, dt.timedelta(days=12), "infinity", "1 day"),  # the dashboard's 60-day view
        (HOUR, dt.timedelta(days=7), "infinity", "4 hours"),  # its 7-day view
        (FIVE, dt.timedelta(hours=24), "infinity", "30 minutes"),  # its 24-hour view
        (FIVE, dt.timedelta(hours=24), "infinity", "24 hours"),  # its totals
        (DAY, dt.timedelta(days=9), "day", "2 days"),  # a finite end on the grain
        (HOUR, dt.timedelta(days=3), "five", "3 hours"),  # start on the hour, end on 5 minutes
    ],
)
def test_aligned_buckets_equal_the_raw_series(
    store: tuple[str, dt.datetime], start_grain: dt.timedelta, back: dt.timedelta, end: str, bucket: str
) -> None:
    url, now = store
    start = _floor(now - back, start_grain)
    stop: Any = {"infinity": "infinity", "day": _floor(now - DAY, DAY), "five": _floor(now - HOUR, FIVE)}[end]
    rollup = _series(url, "efficiency_series_range", start, stop, bucket)
    raw = _series(url, "efficiency_series_raw", start, stop, bucket)
    assert rollup, "the range holds spans"
    assert any(r["prefill_ms_per_token"] is not None for r in raw), "prefill is exercised"
    _assert_equal(rollup, raw)
    # And it is the rollups that answered: the same without any raw span (rolled back).
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute("DELETE FROM tokentrace.spans")
        alone = conn.execute(
            "SELECT * FROM tokentrace.efficiency_series_range(%s, %s, %s::interval)", (start, stop, bucket)
        ).fetchall()
        conn.rollback()
    assert alone == rollup


def test_unaligned_ranges_are_the_raw_series_itself(store: tuple[str, dt.datetime]) -> None:
    url, now = store
    start = now - dt.timedelta(hours=30)  # on no grain
    for end, bucket in (("infinity", "1 hour"), (now - HOUR, "2 hours"), ("infinity", "7 minutes")):
        rollup = _series(url, "efficiency_series_range", start, end, bucket)
        assert rollup == _series(url, "efficiency_series_raw", start, end, bucket)
    # On the grain at the start but not at a finite end: raw as well (exact percentiles).
    start = _floor(now - dt.timedelta(days=2), DAY)
    rollup = _series(url, "efficiency_series_range", start, now, "1 day")
    assert rollup == _series(url, "efficiency_series_raw", start, now, "1 day")


def test_hourly_series_answer_from_rollups_after_the_raw_spans_are_pruned(db: str) -> None:
    rng = random.Random(7)
    now = dt.datetime.now(UTC)
    old = _floor(now - dt.timedelta(days=20), DAY) + dt.timedelta(hours=5, minutes=7)
    instants = [old + dt.timedelta(minutes=7 * i) for i in range(40)]
    assert _write(db, [_span(rng, at) for at in instants]) == 40
    start = _floor(old, DAY)
    before = _series(db, "efficiency_series_range", start, start + DAY, "1 hour")
    _assert_equal(before, _series(db, "efficiency_series_raw", start, start + DAY, "1 hour"))
    assert sum(r["calls"] + r["loads"] for r in before) > 0
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT * FROM tokentrace.prune(interval '10 days')")
    assert _series(db, "efficiency_series_raw", start, start + DAY, "1 hour") == []
    assert _series(db, "efficiency_series_range", start, start + DAY, "1 hour") == before


def test_sums_rolled_up_before_0080_and_since_pruned_are_not_reported(db: str) -> None:
    """Rows the upgrade could not fill (their spans already pruned) hold NULL sums: a
    bucket with one reports prefill, load and inference time as unknown, the rest as usual."""
    rng = random.Random(8)
    now = dt.datetime.now(UTC)
    day = _floor(now - dt.timedelta(days=3), DAY)
    rows = [_span(rng, day + dt.timedelta(hours=h)) for h in range(24)]
    assert _write(db, rows) == len(rows)
    complete = _series(db, "efficiency_series_range", day, day + DAY, "1 day")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE tokentrace.span_rollups SET prefill_ms_tokens = NULL, prefill_input_tokens = NULL, "
            "inference_ms_total = NULL, load_ms_total = NULL WHERE grain = '24:00:00' AND bucket = %s",
            (day,),
        )
    unknown = _series(db, "efficiency_series_range", day, day + DAY, "1 day")
    assert [r["model"] for r in unknown] == [r["model"] for r in complete]
    for mine, full in zip(unknown, complete):
        assert (mine["prefill_ms_per_token"], mine["load_ms"], mine["inference_ms"]) == (None, None, None)
        for key in (*INTS, "weighted_ms_per_token", "decode_ms_per_token", *PCT):
            assert mine[key] == full[key], key
    # What the upgrade does for rows whose spans are still stored: fill them again.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT tokentrace.fill_rollup_totals('-infinity', 'infinity')")
    _assert_equal(_series(db, "efficiency_series_range", day, day + DAY, "1 day"), complete)


def test_upgrading_fills_the_new_sums_from_the_raw_spans(dsn: str) -> None:
    """Spans rolled up by 0060's trigger, then 0080 applied: its sums equal what the new
    trigger writes (a rebuild), and the series from rollups equal the raw ones."""
    from tokentrace.store import migrate as migrations
    from tokentrace.store.writer import SpanWriter

    with own_database(dsn, "tt_series_upgrade", migrated=False) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(migrations._BOOTSTRAP)
            for m in migrations.available():
                if m.version < 80:
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO tokentrace.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
        rng = random.Random(9)
        now = dt.datetime.now(UTC)
        rows = [_span(rng, at) for at in _instants(rng, now, 4, 600)]
        writer = SpanWriter(url, auto_migrate=False)
        try:
            assert writer.write(rows).inserted == len(rows)
        finally:
            writer.close()
        applied = migrate(url)
        assert applied == [m.name for m in migrations.available() if m.version >= 80]
        assert applied[0] == "0080_series_from_rollups.sql"
        key = "grain, bucket, model, operation"
        cols = f"{key}, prefill_ms_tokens, prefill_input_tokens, inference_ms_total, load_ms_total"
        with psycopg.connect(url) as conn:
            filled = conn.execute(f"SELECT {cols} FROM tokentrace.span_rollups ORDER BY {key}").fetchall()
            conn.execute("SELECT tokentrace.rebuild_rollups('-infinity', 'infinity')")
            rebuilt = conn.execute(f"SELECT {cols} FROM tokentrace.span_rollups ORDER BY {key}").fetchall()
            conn.rollback()
        assert len(filled) == len(rebuilt) > 0
        assert all(r[7] is not None for r in filled), "every row with raw spans is filled"
        for mine, want in zip(filled, rebuilt):
            assert mine[:4] == want[:4] and mine[5] == want[5]  # the key; prefill_input_tokens
            for i in (4, 6, 7):  # the float sums, added up in another order
                assert _close(mine[i], want[i], 1e-9), (mine, want)
        start = _floor(now - dt.timedelta(days=3), DAY)
        _assert_equal(
            _series(url, "efficiency_series_range", start, "infinity", "6 hours"),
            _series(url, "efficiency_series_raw", start, "infinity", "6 hours"),
        )
