"""``tokentrace.efficiency_series()`` and its wrapper: the same figures as ``efficiency()``, per bucket."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from tokentrace import reports
from tokentrace.dashboard import series
from tests.integration.dashboard.support import SimModel, sim_call, store_fleet

FLEET = (
    SimModel("small:1b", decode_ms=8, prefill_ms=0.4, load_s=1.5),
    SimModel("large:70b", decode_ms=80, prefill_ms=3.5, load_s=20.0),
)
CALLS = 10
SUMMED = ("calls", "input_tokens", "output_tokens", "loads", "errors")


@pytest.fixture
def fleet_db(clean_db: str) -> str:
    store_fleet(clean_db, FLEET, hours=20, calls=CALLS)
    return clean_db


def _by_model(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(r["model"]): r for r in rows}


def test_one_bucket_is_the_window_and_agrees_with_efficiency(fleet_db: str) -> None:
    with reports.report_connection(fleet_db) as conn:
        totals = _by_model(series(conn, 24, buckets=1))
        expected = _by_model(reports.efficiency(conn, 24))
    assert set(totals) == {m.name for m in FLEET}
    for name, row in totals.items():
        want = expected[name]
        for key in SUMMED:
            assert row[key] == want[key], (name, key)
        for key in ("weighted_ms_per_token", "decode_ms_per_token", "avg_load_ms"):
            assert math.isclose(float(row[key]), float(want[key]), rel_tol=1e-9), (name, key)  # type: ignore[arg-type]
        # efficiency() may answer percentiles from a histogram (stated resolution 2.19 %).
        for key in ("p50_ms_per_token", "p95_ms_per_token"):
            assert math.isclose(float(row[key]), float(want[key]), rel_tol=0.025), (name, key)  # type: ignore[arg-type]


def test_buckets_add_up_to_the_window(fleet_db: str) -> None:
    with reports.report_connection(fleet_db) as conn:
        rows = series(conn, 24, buckets=48)
        totals = _by_model(series(conn, 24, buckets=1))
    assert len({r["bucket_start"] for r in rows}) <= 48
    for name, total in totals.items():
        mine = [r for r in rows if r["model"] == name]
        for key in SUMMED:
            assert sum(int(r[key]) for r in mine) == total[key], (name, key)
        assert math.isclose(sum(r["load_ms"] for r in mine), total["load_ms"], rel_tol=1e-9)
        assert math.isclose(sum(r["inference_ms"] for r in mine), total["inference_ms"], rel_tol=1e-9)


def test_buckets_are_laid_from_the_window_start(fleet_db: str) -> None:
    with reports.report_connection(fleet_db) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        rows = series(conn, 24, buckets=48)
    start = now - dt.timedelta(hours=24)
    for row in rows:
        offset = (row["bucket_start"] - start).total_seconds()
        assert offset >= 0
        assert math.isclose(offset / 1800, round(offset / 1800), abs_tol=1e-6)


def test_prefill_and_load_time_are_token_and_time_weighted(fleet_db: str) -> None:
    small = FLEET[0]
    calls = [sim_call(small, i) for i in range(1, CALLS)]  # call 0 of the first model failed
    prefill_ns = sum(c.prefill_ns for c in calls)
    prompt_tokens = sum(c.input_tokens for c in calls)
    with reports.report_connection(fleet_db) as conn:
        row = _by_model(series(conn, 24, small.name, buckets=1))[small.name]
    assert math.isclose(row["prefill_ms_per_token"], prefill_ns / 1e6 / prompt_tokens, rel_tol=1e-6)
    assert math.isclose(row["load_ms"], small.load_s * 1000, rel_tol=1e-6)
    assert row["errors"] == 1
    assert set(_by_model([row])) == {small.name}


def test_a_model_filter_and_windows_without_spans(fleet_db: str) -> None:
    with reports.report_connection(fleet_db) as conn:
        assert {r["model"] for r in series(conn, 24, "large:70b")} == {"large:70b"}
        assert series(conn, 24, "no-such-model") == []
        assert series(conn, 1, buckets=30) != []  # the last calls are within the hour
        assert series(conn, 0.001) == []


@pytest.mark.parametrize(("hours", "buckets"), [(0, 10), (-1, 10), ("x", 10), (24, 0), (24, 1001), (24, 2.5)])
def test_bad_parameters_are_refused(clean_db: str, hours: object, buckets: object) -> None:
    with reports.report_connection(clean_db) as conn, pytest.raises(reports.ReportError):
        series(conn, hours, buckets=buckets)  # type: ignore[arg-type]
