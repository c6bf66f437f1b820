"""The drop-in for the original system's telemetry object."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import time

import pytest

from tests.helpers import query
from tests.integration.original_shapes import assert_footprint, assert_statistics
from tokentrace.compat import Telemetry
from tokentrace.pipeline import flush

UTC = dt.timezone.utc


def test_seven_methods_with_the_original_shapes(configured: str) -> None:
    async def scenario() -> tuple[dict, dict, dict, dict, float]:  # type: ignore[type-arg]
        telemetry = Telemetry(configured)
        start = await telemetry.start_timer()  # tokentrace's earlier, awaited form
        elapsed = await telemetry.measure_latency(start)
        assert type(start) is float and type(elapsed) is float  # awaited: plain floats
        await telemetry.log_load_latency("orig-model", 3.25)
        await telemetry.log_thought_latency("orig-model", 2.0, tokens_generated=80, prompt_tokens=12)
        await telemetry.log_thought_latency("other", 1.0, tokens_generated=10)
        eff = await telemetry.get_aggregated_efficiency(hours=24, component="orig-model")
        everything = await telemetry.get_aggregated_efficiency()
        stats = await telemetry.get_60day_statistics()
        foot = await telemetry.get_telemetry_footprint()
        return eff, everything, stats, foot, elapsed

    eff, everything, stats, foot, elapsed = asyncio.run(scenario())
    assert 0 <= elapsed < 5
    assert eff["status"] == "success"
    (row,) = eff["efficiency"]
    assert row["model"] == "orig-model"
    assert (row["calls"], row["output_tokens"], row["input_tokens"]) == (1, 80, 12)
    assert row["weighted_ms_per_token"] == 25.0
    assert (row["loads"], row["avg_load_ms"]) == (1, 3250.0)
    assert {r["model"] for r in everything["efficiency"]} == {"orig-model", "other"}

    assert stats["status"] == "success"
    overall = stats["statistics"]["overall"]
    assert overall["total_measurements"] == 3
    assert overall["unique_models"] == 2
    assert overall["total_tokens"] == 102
    assert stats["statistics"]["retention_window_days"] == 60
    trends = {t["component"]: t for t in stats["statistics"]["model_trends"]}
    assert trends["orig-model"]["avg_efficiency"] == 25.0
    assert trends["other"]["total_tokens_processed"] == 10

    assert foot["status"] == "success"
    assert any(r["relation"] == "spans" for r in foot["footprint"]["relations"])


def test_the_original_callers_code_runs_unchanged(configured: str) -> None:
    """Written as the original system's callers wrote it: the timer calls without
    ``await``, their numbers used directly, the logging calls awaited."""
    log = logging.getLogger("router")

    async def load_and_think(telemetry: Telemetry) -> dict[str, float | str]:
        start = telemetry.start_timer()
        await asyncio.sleep(0.05)  # the model loads
        load_time = telemetry.measure_latency(start)
        await telemetry.log_load_latency("orig-model", load_time)
        log.info("loaded in %.3f s (%r)", load_time, load_time)
        start = telemetry.start_timer()
        await asyncio.sleep(0.02)  # it thinks
        latency = telemetry.measure_latency(start)
        await telemetry.log_thought_latency("orig-model", latency, tokens_generated=40, prompt_tokens=8)
        per_token_ms = latency * 1000 / 40
        slow = latency > 5.0 or load_time >= 60
        return {
            "load": load_time,
            "latency": latency,
            "record": json.dumps({"latency": latency, "per_token_ms": round(per_token_ms, 3), "slow": slow}),
            "text": f"{latency:.3f}s",
        }

    got = asyncio.run(load_and_think(Telemetry(configured)))
    load, latency = got["load"], got["latency"]
    assert isinstance(load, float) and isinstance(latency, float)
    assert 0.05 <= load < 5 and 0.02 <= latency < 5
    assert json.loads(str(got["record"]))["latency"] == latency
    assert got["text"] == f"{float(latency):.3f}s"
    flush()
    durations = dict(query(configured, "SELECT operation, duration_ms FROM tokentrace.spans"))
    # The spans last exactly the numbers given (to the nanosecond the span API keeps).
    assert durations["load_model"] == pytest.approx(float(load) * 1000, abs=1e-5)
    assert durations["chat"] == pytest.approx(float(latency) * 1000, abs=1e-5)


def test_the_timer_in_both_forms_in_one_coroutine(configured: str) -> None:
    async def both(telemetry: Telemetry) -> list[object]:
        plain = telemetry.start_timer()
        awaited = await telemetry.start_timer()
        await asyncio.sleep(0.01)
        return [plain, awaited, telemetry.measure_latency(plain), await telemetry.measure_latency(awaited),
                await plain, await asyncio.gather(telemetry.measure_latency(plain))]

    plain, awaited, since_plain, since_awaited, plain_awaited, gathered = asyncio.run(both(Telemetry(configured)))
    assert isinstance(plain, float) and type(awaited) is float and type(since_awaited) is float
    assert plain <= awaited and plain_awaited == plain and type(plain_awaited) is float
    assert since_plain >= 0.01 and since_awaited >= 0.01
    assert isinstance(gathered, list) and gathered[0] >= since_plain


def test_report_dicts_have_the_original_keys_and_types(configured: str) -> None:
    async def reports(telemetry: Telemetry) -> tuple[dict, dict, float, float]:  # type: ignore[type-arg]
        before = time.time()
        foot = await telemetry.get_telemetry_footprint()
        after = time.time()
        return await telemetry.get_60day_statistics(), foot, before, after

    telemetry = Telemetry(configured)
    empty_stats, empty_foot, before, after = asyncio.run(reports(telemetry))
    assert set(empty_stats) == {"status", "statistics"} and empty_stats["status"] == "success"
    assert_statistics(empty_stats["statistics"])
    assert empty_stats["statistics"]["model_trends"] == []
    assert set(empty_foot) == {"status", "footprint"} and empty_foot["status"] == "success"
    assert_footprint(empty_foot["footprint"], before=before, after=after)
    assert empty_foot["footprint"]["oldest_telemetry_record"] is None  # "null on an empty store"

    async def log(telemetry: Telemetry) -> None:
        await telemetry.log_load_latency("orig-model", 2.0)
        await telemetry.log_thought_latency("orig-model", 2.0, tokens_generated=80, prompt_tokens=12)
        await telemetry.log_thought_latency("orig-model", 1.0, tokens_generated=20)
        await telemetry.log_thought_latency("other", 1.0, tokens_generated=10)

    asyncio.run(log(telemetry))
    stats, foot, before, after = asyncio.run(reports(telemetry))
    assert_statistics(stats["statistics"])
    overall = stats["statistics"]["overall"]
    oldest, newest = query(configured, "SELECT min(start_time), max(start_time) FROM tokentrace.spans")[0]
    assert (overall["total_measurements"], overall["unique_models"]) == (4, 2)
    assert (overall["oldest_record"], overall["newest_record"]) == (
        oldest.astimezone(UTC).isoformat(), newest.astimezone(UTC).isoformat()
    )
    trends = {t["component"]: t for t in stats["statistics"]["model_trends"]}
    assert trends["orig-model"] == {
        "component": "orig-model", "model": "orig-model", "avg_efficiency": 30.0,
        "measurement_count": 2, "total_tokens_processed": 112,
    }  # fmt: skip
    assert trends["other"]["avg_efficiency"] == 100.0

    assert_footprint(foot["footprint"], before=before, after=after)
    assert foot["footprint"]["oldest_telemetry_record"] == oldest.astimezone(UTC).isoformat()
    assert foot["footprint"]["row_counts_source"] == "estimated"
    assert "spans" in foot["footprint"]["row_counts"]


def test_bad_window_is_an_error_answer_not_an_exception(configured: str) -> None:
    result = asyncio.run(Telemetry(configured).get_aggregated_efficiency(hours=-1))
    assert result["status"] == "error"
    assert "hours must be greater than 0" in result["message"]


def test_negative_duration_is_refused_by_the_logging_api(configured: str) -> None:
    with pytest.raises(ValueError, match="non-negative number of seconds"):
        asyncio.run(Telemetry(configured).log_thought_latency("m", -1.0, 5))


def test_report_calls_share_a_kept_connection_closed_with_the_object(configured: str) -> None:
    async def calls(telemetry: Telemetry) -> list[str]:
        answers = []
        for _ in range(3):
            answers.append((await telemetry.get_aggregated_efficiency())["status"])
            answers.append((await telemetry.get_60day_statistics())["status"])
            answers.append((await telemetry.get_telemetry_footprint())["status"])
        return answers

    telemetry = Telemetry(configured)
    assert asyncio.run(calls(telemetry)) == ["success"] * 9
    assert telemetry._reports.idle == 1  # one connection, reused by every call
    pid = telemetry._reports.run(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone())
    del telemetry
    gc.collect()
    deadline = time.monotonic() + 10
    while query(configured, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid):
        assert time.monotonic() < deadline, "the kept connection outlived its Telemetry"
        time.sleep(0.05)
