"""The pure parts of bench/bench_dispatch.py: the simulated fleet, LiteLLM's latency
estimator as reimplemented there (checked against litellm's own handler), and the scoring."""

from __future__ import annotations

import datetime as dt
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import require_optional

_PATH = Path(__file__).resolve().parents[2] / "bench" / "bench_dispatch.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dispatch", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_dispatch"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bd = _load()

SPEC = bd.ModelSpec("m", intercept_ms=50.0, prefill_ms=0.5, decode_ms=10.0, load_ms=2000.0,
                    keep_alive_s=300.0, share=1.0)


def _fleet(noise: float = 0.0, **kwargs: object) -> object:
    return bd.Fleet([SPEC], random.Random(3), noise=noise, **kwargs)


# --- the fleet --------------------------------------------------------------------------
def test_a_model_is_cold_until_served_and_warm_for_its_keep_alive_after_the_call_ends() -> None:
    fleet = _fleet()
    assert fleet.resident("m", 10.0) is False
    assert fleet.expected_ms("m", 100, 20, 10.0) == 2000.0 + 50.0 + 50.0 + 200.0
    call = fleet.serve("m", 100, 20, 10.0)
    assert call.cold is True
    assert call.load_ms == 2000.0  # no noise
    assert call.duration_ms == 2300.0
    assert call.end_s == pytest.approx(12.3)
    assert fleet.resident("m", 11.0) is True  # while the call runs
    assert fleet.resident("m", 12.3 + 299.0) is True
    assert fleet.resident("m", 12.3 + 301.0) is False
    warm = fleet.serve("m", 100, 20, 100.0)
    assert warm.cold is False
    assert 2.0 <= warm.load_ms <= 8.0  # a warm Ollama still reports a few ms
    assert fleet.expected_ms("m", 100, 20, 200.0) == 300.0


def test_calls_must_be_served_in_start_order() -> None:
    fleet = _fleet()
    fleet.serve("m", 10, 10, 50.0)
    with pytest.raises(ValueError, match="start order"):
        fleet.serve("m", 10, 10, 40.0)


def test_a_slowed_model_costs_the_factor_more_from_the_slowdown_on_but_loads_as_before() -> None:
    fleet = _fleet(slow_model="m", slow_at_s=1000.0, slow_factor=2.0)
    assert fleet.expected_ms("m", 100, 20, 999.0) == 2300.0
    assert fleet.expected_ms("m", 100, 20, 1000.0) == 2000.0 + 2 * 300.0


def test_noise_is_multiplicative_around_the_true_cost() -> None:
    fleet = _fleet(noise=0.06)
    fleet.serve("m", 1, 1, 0.0)
    rng = random.Random(11)
    draws = [fleet.draw("m", 1000, 100, 10.0, rng).duration_ms for _ in range(2000)]
    true = fleet.expected_ms("m", 1000, 100, 10.0)
    assert statistics_median(draws) == pytest.approx(true, rel=0.02)
    assert min(draws) > 0.7 * true and max(draws) < 1.4 * true


def statistics_median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def test_traffic_is_poisson_at_the_rate_and_spread_by_share() -> None:
    specs = [SPEC, bd.ModelSpec("n", 1, 1, 1, 1, 1, 3.0)]
    arrivals = list(bd.traffic(specs, random.Random(5), 30.0, 3600.0))
    assert 1700 <= len(arrivals) <= 1900  # 1800 expected
    assert all(a[0] < b[0] for a, b in zip(arrivals, arrivals[1:]))
    share_n = sum(a[1] == "n" for a in arrivals) / len(arrivals)
    assert 0.70 <= share_n <= 0.80
    assert all(16 <= a[2] <= 6000 and 8 <= a[3] <= 1000 for a in arrivals)


# --- LiteLLM's estimator ------------------------------------------------------------------
def test_litellm_estimator_keeps_the_last_ten_per_token_samples_and_ranks_by_their_mean() -> None:
    est = bd.LiteLLMLatency()
    for i in range(12):
        est.observe("a", float(i), response_s=float(i + 1), completion_tokens=10)
    # samples 3..12 seconds over 10 tokens: mean 0.75 s/token
    assert est.latency("a", 12.0) == pytest.approx(0.75)
    assert est.expected_ms("a", 100, 12.0) == pytest.approx(75_000.0)
    assert est.expected_ms("b", 100, 12.0) is None
    # an unseen deployment has latency 0 and is tried first, as LiteLLM's [0] makes it
    assert est.latency("b", 12.0) == 0.0
    assert est.pick(["a", "b"], 12.0, random.Random(1)) == "b"


def test_litellm_estimator_without_usage_keeps_seconds_and_forgets_after_its_ttl() -> None:
    est = bd.LiteLLMLatency(per_token=False)
    est.observe("a", 0.0, 2.0, 10)
    est.observe("a", 10.0, 4.0, 10)
    assert est.expected_ms("a", 999, 10.0) == pytest.approx(3000.0)
    assert est.seen("a", 10.0 + 3599.0) is True
    assert est.seen("a", 10.0 + 3600.0) is False


def test_litellm_estimator_matches_litellms_own_lowest_latency_handler() -> None:
    """The reimplementation against LowestLatencyLoggingHandler itself, on one sequence."""
    require_optional("litellm", "the cross-check against litellm's own handler")
    from litellm import ModelResponse
    from litellm.caching.caching import DualCache
    from litellm.router_strategy.lowest_latency import LowestLatencyLoggingHandler
    from litellm.types.utils import Usage

    handler = LowestLatencyLoggingHandler(router_cache=DualCache(), routing_args={})
    ours = bd.LiteLLMLatency()
    rng = random.Random(9)
    t0 = dt.datetime(2026, 12, 1, 12, 0, 0)
    deployments = [
        {"model_name": "g", "litellm_params": {"model": f"openai/{name}"}, "model_info": {"id": name}}
        for name in ("a", "b", "c")
    ]
    unseen_zero_checked = False
    for i in range(40):
        name = rng.choice("abc")
        seconds = round(rng.uniform(0.2, 5.0), 6)  # timedelta keeps microseconds
        tokens = rng.choice([0, 1, 7, 50, 300])
        start = t0 + dt.timedelta(seconds=i)
        kwargs = {"litellm_params": {"metadata": {"model_group": "g"}, "model_info": {"id": name}}}
        response = ModelResponse(usage=Usage(prompt_tokens=5, completion_tokens=tokens,
                                             total_tokens=5 + tokens))
        handler.log_success_event(kwargs, response, start, start + dt.timedelta(seconds=seconds))
        ours.observe(name, float(i), seconds, tokens)
        state = handler.router_cache.get_cache(key="g_map")
        for d in "abc":
            theirs = (state.get(d) or {}).get("latency_normalized", [])
            mine = list(ours._samples.get(d, ()))
            assert mine == pytest.approx(theirs), (i, d)
        picked = handler.get_available_deployments("g", healthy_deployments=deployments)
        mine_picked = ours.pick(["a", "b", "c"], float(i), random.Random(i))
        means = sorted(ours.latency(d, float(i)) for d in "abc")
        if means[0] < means[1]:  # ties are broken at random, by each its own way
            assert picked["model_info"]["id"] == mine_picked, (i, means)
        unseen_zero_checked |= 0.0 in means
    assert unseen_zero_checked  # the [0] of a deployment not seen yet was compared too


# --- scoring ------------------------------------------------------------------------------
def _probe(at_s: float, predicted: dict[str, float | None], picked: str | None, **kw: object) -> object:
    probe = bd.Probe(
        at_s=at_s, prompt_tokens=10, output_tokens=10,
        true_ms={"x": 100.0, "y": 200.0}, realized_ms={"x": 110.0, "y": 190.0},
        resident={"x": True, "y": False}, **kw,
    )
    probe.predicted_ms["e"] = predicted
    probe.picked["e"] = picked
    return probe


def test_mape_is_the_median_error_against_the_realisation_per_model_and_overall() -> None:
    probes = [
        _probe(10.0, {"x": 121.0, "y": 190.0}, "x"),  # x: 10 %, y: 0 %
        _probe(20.0, {"x": 99.0, "y": None}, "x"),  # x: 10 %, y: no figure
        _probe(30.0, {"x": 110.0, "y": 380.0}, "y"),  # x: 0 %, y: 100 %
        _probe(99.0, {"x": 1.0, "y": 1.0}, "y"),  # outside the window
        _probe(15.0, {"x": 1.0, "y": 1.0}, "y", reference=True),  # reference: not counted
    ]
    table = bd.mape_table(probes, "e", ["x", "y"], 0.0, 50.0)
    assert table["x"] == pytest.approx(0.10)
    assert table["y"] == pytest.approx(0.50)
    assert table["all"] == pytest.approx(0.10)  # median of 0.1, 0, 0.1, 0, 1.0
    assert bd.coverage(probes, "e", ["x", "y"], 0.0, 50.0) == pytest.approx(5 / 6)
    right, regret = bd.fastest_rate(probes, "e", 0.0, 50.0)
    assert right == pytest.approx(2 / 3)
    assert regret == 0.0  # regrets 0, 0, 1.0


def test_warm_accuracy_counts_cold_pairs_and_the_always_warm_baseline() -> None:
    probes = [_probe(10.0, {}, None), _probe(20.0, {}, None)]
    probes[0].predicted_warm["e"] = {"x": True, "y": False}
    probes[1].predicted_warm["e"] = {"x": True, "y": True}
    acc = bd.warm_accuracy(probes, "e", ["x", "y"], 0.0, 50.0)
    assert acc == {"accuracy": 0.75, "cold_accuracy": 0.5, "always_warm": 0.5, "cold_share": 0.5}


def test_reaction_minutes_is_when_the_change_starts_to_hold_to_the_end() -> None:
    slow_at = 3600.0
    probes = []
    for minute in range(-30, 21):
        t = slow_at + 60.0 * minute
        # the slowed model "x" is picked until minute 5 after the slowdown (and once more at
        # minute 7); its prediction doubles from minute 12 on
        picked = "x" if minute < 5 or minute == 7 else "y"
        level = 200.0 if minute >= 12 else 100.0
        probes.append(_probe(t, {"x": level, "y": 150.0}, picked, reference=True))
    out = bd.reaction_minutes(probes, "e", "x", slow_at)
    assert out == {"ranking_first": 5.0, "ranking": 8.0, "level_first": 12.0, "level": 12.0}
    never = [_probe(p.at_s, {"x": 100.0, "y": 150.0}, "y", reference=True) for p in probes]
    assert bd.reaction_minutes(never, "e", "x", slow_at) == {
        "ranking_first": "n/a", "ranking": "n/a", "level_first": None, "level": None}


def test_simulation_without_tokentrace_scores_the_oracle_perfect_and_litellm_worse() -> None:
    config = bd.SimConfig(hours=2.0, slow_at_h=1.5, warmup_h=0.5, rate_per_min=10.0, probes=3,
                          seed=4)
    result = bd.simulate(config, bd.FLEET, sink=None, query=None,
                         base=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    assert 1000 <= result.calls <= 1400  # 10 per minute for 2 hours
    assert len(result.probes) == 119 * 4  # a tick a minute, 3 + the reference request
    scores = bd.score(result)
    assert scores["oracle"]["fastest"] == 1.0
    assert scores["oracle"]["mape"]["all"] < 0.06  # the noise floor alone
    assert scores["litellm per-token"]["coverage"] == 1.0
    assert scores["litellm per-token"]["mape"]["all"] > 2 * scores["oracle"]["mape"]["all"]
    assert scores["tokentrace"]["coverage"] == 0.0
    assert 0.05 < (scores["tokentrace"]["warm"]["cold_share"] or 0.0) < 0.5
