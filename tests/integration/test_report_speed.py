"""Migration 0040: the raw edges of a window planned per call, and prune() without
``count(*)`` — on a real PostgreSQL, against raw scans and exact counts."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import psycopg

from tests.helpers import query
from tests.integration.test_rollups import (
    EPOCH,
    MODELS,
    RAW_EFFICIENCY,
    UTC,
    _assert_efficiency,
    _assert_same_rollups,
    _row,
    _write,
    query_dicts,
)
from tokentrace import retention
from tokentrace.store.rows import SpanData, build_row

SUMMARY_COLUMNS = (
    "bucket, model, operation, spans, errors, input_tokens, output_tokens, timed_calls, "
    "timed_inference_ms, timed_output_tokens, decode_ms_tokens, decode_output_tokens, "
    "load_ms_n, load_ms_sum, first_start, last_start"
)


def _modelless(rng: random.Random, at: dt.datetime) -> Any:
    """A span that names no model: stored, counted by no report, rolled up nowhere."""
    start = (at - EPOCH) // dt.timedelta(microseconds=1) * 1000
    return build_row(
        SpanData(
            trace_id=rng.randbytes(15) + b"\x02",
            span_id=rng.randbytes(7) + b"\x02",
            parent_span_id=None,
            name="no model",
            kind="INTERNAL",
            start_ns=start,
            end_ns=start + 1_000_000,
            attributes={"gen_ai.operation.name": "chat"},
        )
    )


def test_raw_edges_equal_raw_scans_with_and_without_histograms(db: str) -> None:
    rng = random.Random(40)
    now = dt.datetime.now(UTC)
    # Three days of spans, dense around the edges of the windows below.
    lo = now - dt.timedelta(days=1, minutes=2, seconds=13)  # raw edges of up to 5 minutes
    hi = now - dt.timedelta(hours=3, minutes=1, seconds=7)
    rows = [_row(rng, now - dt.timedelta(seconds=rng.uniform(0, 3 * 86400))) for _ in range(1200)]
    rows += [
        _row(rng, at + dt.timedelta(seconds=rng.uniform(-330, 330)))
        for at in (lo, hi)
        for _ in range(150)
    ]
    _write(db, rows)
    for model in (None, MODELS[1]):
        plan = query(
            db, "SELECT source FROM tokentrace.window_plan(%s, %s) WHERE source = 'raw'", (lo, hi)
        )
        assert len(plan) == 2  # both edges come from raw spans
        got = query_dicts(
            db, "SELECT * FROM tokentrace.efficiency_range(%s, %s, %s)", (lo, hi, model)
        )
        want = query_dicts(db, RAW_EFFICIENCY, {"lo": lo, "hi": hi, "model": model})
        _assert_efficiency(got, want, f"edges {model}")

        # window_parts without histograms: the same sums, histogram columns NULL.
        with_h = query(
            db,
            f"SELECT source, {SUMMARY_COLUMNS}, mpt_bins, mpt_counts "
            "FROM tokentrace.window_parts(%s, %s, %s, true) ORDER BY 1, 2, 3, 4",
            (lo, hi, model),
        )
        without = query(
            db,
            f"SELECT source, {SUMMARY_COLUMNS}, mpt_bins, mpt_counts "
            "FROM tokentrace.window_parts(%s, %s, %s, false) ORDER BY 1, 2, 3, 4",
            (lo, hi, model),
        )
        _assert_same_rollups([r[:-2] for r in without], [r[:-2] for r in with_h])
        assert all(r[-2] is None and r[-1] is None for r in without)
        assert any(r[0] == "raw" for r in with_h)

    # The 4-argument span_summary() is the 5-argument one with histograms.
    for grain in (None, dt.timedelta(minutes=5), dt.timedelta(hours=1)):
        four = query(
            db,
            "SELECT * FROM tokentrace.span_summary(%s, %s, %s) ORDER BY 1, 2, 3",
            (lo, hi, grain),
        )
        five = query(
            db,
            "SELECT * FROM tokentrace.span_summary(%s, %s, %s, NULL, true) ORDER BY 1, 2, 3",
            (lo, hi, grain),
        )
        assert four == five and four
        bare = query(
            db,
            f"SELECT {SUMMARY_COLUMNS}, mpt_bins, mpt_counts "
            "FROM tokentrace.span_summary(%s, %s, %s, NULL, false) ORDER BY 1, 2, 3",
            (lo, hi, grain),
        )
        _assert_same_rollups([r[:-2] for r in bare], [r[:-2] for r in four])
        assert {(r[-2], r[-1]) for r in bare} == {(None, None)}
        # Counted against the raw spans, per bucket.
        raw = query(
            db,
            "SELECT count(*) FROM tokentrace.spans "
            "WHERE start_time >= %s AND start_time < %s AND model IS NOT NULL",
            (lo, hi),
        )
        assert sum(r[3] for r in four) == raw[0][0]


def test_prune_reports_spans_from_rollups_and_counts_exactly_on_request(db: str) -> None:
    rng = random.Random(41)
    now = dt.datetime.now(UTC)
    day1 = EPOCH + dt.timedelta(days=(now - EPOCH).days - 81)
    day2 = day1 + dt.timedelta(days=1)
    modelled = {
        d: [_row(rng, d + dt.timedelta(seconds=rng.uniform(0, 86399))) for _ in range(n)]
        for d, n in ((day1, 120), (day2, 75))
    }
    modelless = {
        d: [_modelless(rng, d + dt.timedelta(hours=h)) for h in range(n)]
        for d, n in ((day1, 3), (day2, 5))
    }
    for d in (day1, day2):
        _write(db, modelled[d] + modelless[d])
    fine = dict(
        query(
            db,
            "SELECT (bucket AT TIME ZONE 'UTC')::date, count(*) FROM tokentrace.span_rollups "
            "WHERE grain = '5 minutes' GROUP BY 1",
        )
    )

    # Default: the day's spans with a model, from the 5-minute rollups it deletes.
    first = retention.prune(db, 80, 400)  # drops day1 only
    assert [(d.partition, d.day, d.spans, d.rollup_rows) for d in first.partitions] == [
        (f"spans_{day1:%Y%m%d}", day1.date(), 120, fine[day1.date()])
    ]
    assert first.as_json()["span_counts"] == "rollups" and not first.exact_counts

    # exact_counts: count(*) of the partition, spans without a model included.
    second = retention.prune(db, 60, 400, exact_counts=True)
    assert [(d.day, d.spans, d.rollup_rows) for d in second.partitions] == [
        (day2.date(), 75 + 5, fine[day2.date()])
    ]
    assert second.as_json()["span_counts"] == "exact"
    assert query(db, "SELECT count(*) FROM tokentrace.span_rollups WHERE grain = '5 minutes'") == [
        (0,)
    ]
    # Hourly and daily rollups stay, with every span with a model.
    assert query(db, "SELECT sum(spans) FROM tokentrace.span_rollups WHERE grain = '1 day'") == [
        (195,)
    ]



def test_prune_of_a_day_recreated_by_a_late_span(db: str) -> None:
    """A late span recreates a day before the raw horizon: the next prune drops it,
    with its new 5-minute rollups, though its scan starts after the previous horizon."""
    rng = random.Random(42)
    now = dt.datetime.now(UTC)
    old = EPOCH + dt.timedelta(days=(now - EPOCH).days - 75, hours=9)
    recent = EPOCH + dt.timedelta(days=(now - EPOCH).days - 62, hours=9)
    _write(db, [_row(rng, old + dt.timedelta(minutes=m), "phi3") for m in range(0, 120, 5)])
    _write(db, [_row(rng, recent + dt.timedelta(minutes=m), "phi3") for m in range(0, 60, 5)])
    retention.prune(db, 70, 400)  # drops `old`; the horizon is now 70 days back
    horizon = query(db, "SELECT tokentrace.raw_horizon()")[0][0]
    assert old < horizon < recent

    late = [_row(rng, old + dt.timedelta(minutes=31, seconds=s), "phi3") for s in range(4)]
    _write(db, late)  # recreates the day partition of `old`, and its 5-minute rollups
    late_fine = query(
        db,
        "SELECT count(*) FROM tokentrace.span_rollups WHERE grain = '5 minutes' AND bucket < %s",
        (horizon,),
    )[0][0]
    assert late_fine >= 1

    result = retention.prune(db, 60, 400)
    got = {d.day: (d.partition, d.spans) for d in result.days if d.kind == "raw"}
    assert got == {
        old.date(): (f"spans_{old:%Y%m%d}", len(late)),
        recent.date(): (f"spans_{recent:%Y%m%d}", 12),
    }
    assert query(db, "SELECT count(*) FROM tokentrace.span_rollups WHERE grain = '5 minutes'") == [
        (0,)
    ]
    assert query(db, "SELECT count(*) FROM tokentrace.span_partitions") == [(0,)]


def test_prune_removes_five_minute_rollups_left_without_a_partition(db: str) -> None:
    rng = random.Random(43)
    now = dt.datetime.now(UTC)
    old = EPOCH + dt.timedelta(days=(now - EPOCH).days - 70, hours=3)
    _write(db, [_row(rng, old + dt.timedelta(minutes=m), "mistral") for m in range(0, 60, 10)])
    fine = query(db, "SELECT count(*) FROM tokentrace.span_rollups WHERE grain = '5 minutes'")[0][0]
    # The partition dropped by hand: its 5-minute rollups are left behind.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"DROP TABLE tokentrace.spans_{old:%Y%m%d}")
    result = retention.prune(db, 60, 400)
    assert [(d.kind, d.partition, d.day, d.spans, d.rollup_rows) for d in result.days] == [
        ("raw", None, old.date(), 0, fine)
    ]
    assert result.partitions == []


def test_prune_sql_needs_its_owner(db: str) -> None:
    # prune(interval, interval, boolean) is not executable by PUBLIC (0030's rule).
    assert query(
        db,
        "SELECT has_function_privilege('public', "
        "'tokentrace.prune(interval, interval, boolean)', 'EXECUTE')",
    ) == [(False,)]
    assert query(
        db,
        "SELECT count(*) FROM pg_proc WHERE proname = 'prune' "
        "AND pronamespace = 'tokentrace'::regnamespace",
    ) == [(1,)]
    for exact in (False, True):
        assert query(db, "SELECT * FROM tokentrace.prune('90 days', NULL, %s)", (exact,)) == []
