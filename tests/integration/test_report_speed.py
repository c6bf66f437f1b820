"""Migrations 0040 and 0050: the raw edges of a window planned per call, prune()
without ``count(*)``, windows read as signed pieces, and the two-phase prune — on a
real PostgreSQL, against raw scans and exact counts."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

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
    # prune(interval, interval, boolean, boolean) and the release are not executable by
    # PUBLIC (0030's rule), nor is the schema of detached partitions usable by it.
    assert query(
        db,
        "SELECT has_function_privilege('public', "
        "'tokentrace.prune(interval, interval, boolean, boolean)', 'EXECUTE'), "
        "has_function_privilege('public', 'tokentrace_expired.release_pruned()', 'EXECUTE'), "
        "has_schema_privilege('public', 'tokentrace_expired', 'USAGE')",
    ) == [(False, False, False)]
    assert query(
        db,
        "SELECT count(*) FROM pg_proc WHERE proname = 'prune' "
        "AND pronamespace = 'tokentrace'::regnamespace",
    ) == [(1,)]
    for exact in (False, True):
        for defer in (False, True):
            assert (
                query(db, "SELECT * FROM tokentrace.prune('90 days', NULL, %s, %s)", (exact, defer))
                == []
            )
    assert query(db, "SELECT * FROM tokentrace.prune('90 days')") == []


# --- windows as signed pieces (0050) ----------------------------------------------------
def _signed_windows(rng: random.Random, now: dt.datetime) -> list[tuple[dt.datetime, Any]]:
    """Windows whose edges fall at every position within their day: before and after
    noon, on and next to boundaries, a few seconds long and straddling noon (where the
    signed plan is not cheaper), overlapping edges, and open-ended ones."""
    today = EPOCH + dt.timedelta(days=(now - EPOCH).days)
    out: list[tuple[dt.datetime, Any]] = []
    for hours in (0.3, 2.5, 7.6, 11.99, 12.0, 12.01, 16.2, 23.9):
        lo = today - dt.timedelta(days=2, hours=-hours, seconds=-rng.uniform(0, 59))
        for length in (dt.timedelta(seconds=7), dt.timedelta(minutes=17), dt.timedelta(hours=5),
                       dt.timedelta(hours=24), dt.timedelta(days=1, hours=13, minutes=3)):
            out.append((lo, lo + length))
        out.append((lo, None))
    noon = today - dt.timedelta(days=1) + dt.timedelta(hours=12)
    out += [
        (noon - dt.timedelta(minutes=1), noon + dt.timedelta(minutes=1)),
        (noon - dt.timedelta(hours=3), noon + dt.timedelta(hours=3, minutes=4)),
        (today - dt.timedelta(days=1), today),
        (today - dt.timedelta(days=1, minutes=3), today + dt.timedelta(minutes=2, seconds=31)),
        (now - dt.timedelta(hours=24), None),
        (now - dt.timedelta(days=3), None),
    ]
    return out


def test_signed_plans_cover_the_same_spans_and_read_fewer_rows(db: str) -> None:
    rng = random.Random(50)
    now = dt.datetime.now(UTC)
    # Dense enough that every 5-minute bucket of the last four days has spans.
    rows = [_row(rng, now - dt.timedelta(seconds=rng.uniform(-600, 4 * 86400))) for _ in range(4000)]
    _write(db, rows)
    count_piece = (
        "SELECT coalesce(sum(p.weight * (SELECT count(*) FROM tokentrace.spans s "
        "  WHERE s.model IS NOT NULL AND s.start_time >= p.piece_start "
        "  AND s.start_time < p.piece_end)), 0)::bigint, "
        "count(*) FILTER (WHERE p.weight < 0) "
        "FROM tokentrace.window_plan(%(lo)s, coalesce(%(hi)s::timestamptz, 'infinity'), true) p"
    )
    raw_count = (
        "SELECT count(*) FROM tokentrace.spans WHERE model IS NOT NULL AND start_time >= %(lo)s "
        "AND (%(hi)s::timestamptz IS NULL OR start_time < %(hi)s)"
    )
    rollup_rows = (
        "SELECT coalesce(sum(abs(p.weight) * (SELECT count(*) FROM tokentrace.span_rollups r "
        "  WHERE r.grain = p.grain AND r.bucket >= p.piece_start AND r.bucket < p.piece_end)), 0)::bigint "
        "FROM tokentrace.window_plan(%(lo)s, coalesce(%(hi)s::timestamptz, 'infinity'), %(signed)s) p "
        "WHERE p.source = 'rollup'"
    )
    negative = fewer = 0
    for lo, hi in _signed_windows(rng, now):
        params = {"lo": lo, "hi": hi}
        [(covered, minus)] = query(db, count_piece, params)
        assert covered == query(db, raw_count, params)[0][0], (lo, hi)
        negative += minus > 0
        signed = query(db, rollup_rows, {**params, "signed": True})[0][0]
        additive = query(db, rollup_rows, {**params, "signed": False})[0][0]
        fewer += signed < additive
        assert signed <= additive * 1.5 + 30, (lo, hi, signed, additive)  # never much worse
        for model in (None, MODELS[2]):
            got = query_dicts(
                db,
                "SELECT * FROM tokentrace.efficiency_range(%s, coalesce(%s::timestamptz, "
                "'infinity'), %s)",
                (lo, hi, model),
            )
            far = hi or dt.datetime.max.replace(tzinfo=UTC)
            want = query_dicts(db, RAW_EFFICIENCY, {"lo": lo, "hi": far, "model": model})
            _assert_efficiency(got, want, f"[{lo}, {hi}) {model}")
    assert negative >= 10 and fewer >= 10  # the signed form is used, and pays off
    # The 3-argument plan without signs is window_plan() with weight 1.
    lo = now - dt.timedelta(hours=30, minutes=7)
    assert query(
        db, "SELECT source, grain, piece_start, piece_end, 1 FROM tokentrace.window_plan(%s, %s)",
        (lo, now),
    ) == query(db, "SELECT * FROM tokentrace.window_plan(%s, %s, false)", (lo, now))


def test_signed_plans_before_the_raw_horizon_resolve_to_whole_hours(db: str) -> None:
    rng = random.Random(51)
    now = dt.datetime.now(UTC)
    _write(db, [_row(rng, now - dt.timedelta(seconds=rng.uniform(0, 75 * 86400))) for _ in range(3000)])
    windows: list[tuple[dt.datetime, dt.datetime | None]] = []
    for d in (70.3, 64.9, 61.02, 60.5, 60.01):
        lo = now - dt.timedelta(days=d, minutes=13)
        for hi in (None, lo + dt.timedelta(hours=9, minutes=41), lo + dt.timedelta(days=6, hours=1)):
            windows.append((lo, hi))
    retention.prune(db, 60, 400)
    horizon = query(db, "SELECT tokentrace.raw_horizon()")[0][0]
    assert any(lo < horizon for lo, _ in windows) and any(lo > horizon for lo, _ in windows)
    for lo, hi in windows:
        # The same window read from window_parts() (additive, 0040) and from the signed
        # plan: equal, whichever side of the horizon each edge lies.
        got = query_dicts(
            db,
            "SELECT * FROM tokentrace.efficiency_range(%s, coalesce(%s::timestamptz, 'infinity'))",
            (lo, hi),
        )
        additive = query_dicts(
            db,
            "SELECT model, coalesce(sum(spans) FILTER (WHERE operation <> 'load_model'), 0) AS calls,"
            " coalesce(sum(spans) FILTER (WHERE operation = 'load_model'), 0) AS loads,"
            " sum(errors) AS errors, coalesce(sum(output_tokens) FILTER "
            " (WHERE operation <> 'load_model'), 0) AS output_tokens "
            "FROM tokentrace.window_parts(%s, coalesce(%s::timestamptz, 'infinity')) GROUP BY model",
            (lo, hi),
        )
        assert {
            r["model"]: (r["calls"], r["loads"], r["errors"], r["output_tokens"]) for r in got
        } == {
            r["model"]: (r["calls"], r["loads"], r["errors"], r["output_tokens"]) for r in additive
        }, (lo, hi, horizon)


# --- the two-phase prune (0050) -----------------------------------------------------------
def _expired_tables(db: str) -> list[str]:
    return [
        r[0]
        for r in query(
            db,
            "SELECT relname::text FROM pg_class WHERE relnamespace = "
            "'tokentrace_expired'::regnamespace AND relkind = 'r' ORDER BY 1",
        )
    ]


def _count_expired(db: str, day: dt.datetime) -> int:
    table = sql.Identifier("tokentrace_expired", f"spans_{day:%Y%m%d}")
    with psycopg.connect(db) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    return int(row[0]) if row else -1


def _old_days(
    db: str, rng: random.Random, days_ago: tuple[int, ...], n: int = 30, clean: bool = True
) -> list[dt.datetime]:
    """Spans on days ``days_ago`` (with ``clean``, nothing left over in tokentrace_expired
    first: the ``db`` fixture empties tokentrace.spans only)."""
    if clean:
        query(db, "SELECT * FROM tokentrace_expired.release_pruned()")
    now = dt.datetime.now(UTC)
    starts = [EPOCH + dt.timedelta(days=(now - EPOCH).days - d) for d in days_ago]
    for start in starts:
        _write(db, [_row(rng, start + dt.timedelta(seconds=rng.uniform(0, 86399))) for _ in range(n)])
    return starts


def test_two_phase_prune_removes_spans_then_frees_files(db: str) -> None:
    rng = random.Random(52)
    old = _old_days(db, rng, (75, 74, 73))
    kept = query(db, "SELECT count(*) FROM tokentrace.spans WHERE start_time >= %s", (old[-1] + dt.timedelta(days=1),))
    sizes = dict(
        query(
            db,
            "SELECT partition_name, pg_total_relation_size(partition) FROM tokentrace.span_partitions",
        )
    )
    before = query_dicts(db, "SELECT * FROM tokentrace.efficiency_range(%s, %s)", (old[0], old[-1] + dt.timedelta(days=1)))

    result = retention.prune(db, 60, 400)
    names = [f"spans_{d:%Y%m%d}" for d in old]
    assert [d.partition for d in result.partitions] == names
    assert [t.table for t in result.released] == names
    assert [t.bytes for t in result.released] == [sizes[n] for n in names]
    assert result.bytes_released == sum(sizes[n] for n in names) > 0
    assert result.release_error is None and result.release_ms is not None
    assert result.removed_ms > 0
    assert _expired_tables(db) == []  # the files are gone
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == kept
    payload = result.as_json()
    assert payload["bytes_released"] == result.bytes_released
    assert [r["table"] for r in payload["released"]] == names  # type: ignore[index, union-attr]
    assert "released" in result.summary()
    # The hourly and daily rollups still answer for those days (whole hours).
    after = query_dicts(db, "SELECT * FROM tokentrace.efficiency_range(%s, %s)", (old[0], old[-1] + dt.timedelta(days=1)))
    assert {r["model"]: r["calls"] for r in after} == {r["model"]: r["calls"] for r in before}


def test_deferred_prune_in_sql_then_release_and_leftovers(db: str) -> None:
    rng = random.Random(53)
    old = _old_days(db, rng, (80, 79))
    rows = query(db, "SELECT * FROM tokentrace.prune('60 days', defer_release => true)")
    assert [(r[0], r[2]) for r in rows] == [(f"spans_{d:%Y%m%d}", 30) for d in old]
    # Phase 1 only: the spans are gone from the table and every report, the partitions
    # wait (detached) in tokentrace_expired.
    assert _expired_tables(db) == [f"spans_{d:%Y%m%d}" for d in old]
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == [(0,)]
    assert query(db, "SELECT count(*) FROM tokentrace.span_partitions") == [(0,)]
    assert _count_expired(db, old[0]) == 30

    # A "crash" here: the release never ran. A late span recreates the first day, and a
    # second deferred prune moves it out too, dropping the same-named leftover first.
    _write(db, [_row(rng, old[0] + dt.timedelta(hours=5))])
    again = query(
        db,
        "SELECT partition_name, spans FROM tokentrace.prune('60 days', defer_release => true) "
        "WHERE partition_name IS NOT NULL",
    )
    # The first day's 5-minute rollups were left for the release that never ran, so
    # they are counted again with the late span (a documented edge of that case).
    assert again == [(f"spans_{old[0]:%Y%m%d}", 31)]
    assert _count_expired(db, old[0]) == 1

    # The next prune from Python releases whatever was left, with nothing new to prune.
    result = retention.prune(db, 60, 400)
    assert result.partitions == []
    assert sorted(t.table for t in result.released) == [f"spans_{d:%Y%m%d}" for d in old]
    assert _expired_tables(db) == []

    # prune() in SQL without defer_release drops in one go and releases leftovers too.
    _old_days(db, rng, (78,))
    query(db, "SELECT * FROM tokentrace.prune('60 days', defer_release => true)")
    _old_days(db, rng, (77,), clean=False)
    assert len(query(db, "SELECT * FROM tokentrace.prune('60 days')")) == 1
    assert _expired_tables(db) == []


def test_release_takes_no_lock_on_spans(db: str) -> None:
    rng = random.Random(54)
    _old_days(db, rng, (70,))
    retention.prune(db, 60, 400, release=False)
    assert len(_expired_tables(db)) == 1
    with psycopg.connect(db) as holder:
        # Every writer and reader of tokentrace.spans waits behind this lock; the release
        # must not (lock_timeout would fail it).
        holder.execute("LOCK TABLE tokentrace.spans IN ACCESS EXCLUSIVE MODE")
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '3s'")
            released = conn.execute("SELECT table_name FROM tokentrace_expired.release_pruned()").fetchall()
        holder.rollback()
    assert len(released) == 1 and _expired_tables(db) == []


def test_phase_one_waits_for_readers_of_spans_like_drop(db: str) -> None:
    """Detaching needs the same lock on tokentrace.spans as DROP did: it waits for a
    transaction reading spans, then completes both phases."""
    rng = random.Random(55)
    _old_days(db, rng, (66,), n=200)
    with psycopg.connect(db) as blocker:
        blocker.execute("SELECT count(*) FROM tokentrace.spans")  # holds ACCESS SHARE
        done = threading.Event()
        out: dict[str, Any] = {}

        def run() -> None:
            out["result"] = retention.prune(db, 60, 400)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.5)
        assert not done.is_set()  # the detach waits for the reader, as DROP would
        blocker.rollback()
        thread.join(30)
    assert out["result"].partitions and out["result"].released


def test_a_failed_release_is_reported_and_retried(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(56)
    _old_days(db, rng, (68,))

    def broken(conn: psycopg.Connection[Any]) -> tuple[retention.ReleasedTable, ...]:
        raise psycopg.OperationalError("disk on fire")

    monkeypatch.setattr(retention, "_release", broken)
    result = retention.prune(db, 60, 400)
    assert result.partitions and not result.released
    assert result.release_error == "disk on fire" and "FAILED" in result.summary()
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == [(0,)]  # phase 1 stands
    waiting = _expired_tables(db)
    assert len(waiting) == 1
    monkeypatch.undo()
    assert [t.table for t in retention.prune(db, 60, 400).released] == waiting
