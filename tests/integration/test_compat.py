"""The drop-in for the original system's telemetry object."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from tests.helpers import query
from tokentrace.compat import Telemetry


def test_seven_methods_with_the_original_shapes(configured: str) -> None:
    async def scenario() -> tuple[dict, dict, dict, dict, float]:  # type: ignore[type-arg]
        telemetry = Telemetry(configured)
        start = await telemetry.start_timer()
        elapsed = await telemetry.measure_latency(start)
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
    trends = {t["model"]: t for t in stats["statistics"]["model_trends"]}
    assert trends["orig-model"]["avg_efficiency"] == 25.0
    assert trends["other"]["total_tokens_processed"] == 10

    assert foot["status"] == "success"
    assert any(r["relation"] == "spans" for r in foot["footprint"]["relations"])


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
