"""Which model, now? ``tokentrace.expected_latency()`` on a real PostgreSQL.

Spans go in through the real SDK, processor and exporter (or the store's writer, for
wrapper pairs in a chosen order); the fit is read back through
:func:`tokentrace.expected.expected_latency` and the SQL function, live and after a
rebuild of the rollups from the raw spans.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.helpers import query
from tokentrace import attributes as A
from tokentrace.expected import Estimate, ExpectedLatencyError, estimates, expected_latency
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.processor import TokenEfficiencySpanProcessor
from tokentrace.store.rows import SpanData, build_row
from tokentrace.store.writer import SpanWriter

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MS_NS = 1_000_000

# The true latency model of the synthetic fleet: ms = intercept + a·P + b·O.
INTERCEPT, PREFILL, DECODE = 120.0, 0.4, 18.0
SIZES = [(p, o) for p, o in itertools.product((50, 300, 900, 2000), (10, 60, 150, 400))]


def _ns(at: dt.datetime) -> int:
    return (at - EPOCH) // dt.timedelta(microseconds=1) * 1000


def _true_ms(p: int, o: int, intercept: float = INTERCEPT, a: float = PREFILL, b: float = DECODE) -> float:
    return intercept + a * p + b * o


@pytest.fixture
def provider(db: str) -> Iterator[TracerProvider]:
    tp = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    tp.add_span_processor(TokenEfficiencySpanProcessor(SimpleSpanProcessor(PostgresSpanExporter(db))))
    yield tp
    tp.shutdown()


@pytest.fixture
def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _call(
    tp: TracerProvider,
    model: str,
    p: int,
    o: int,
    start: dt.datetime,
    ms: float,
    *,
    load_ms: float | None = None,
    keep_alive_s: float | None = None,
    provider_name: str = "ollama",
    decode_ms: float | None = None,
) -> None:
    """One call, as the Ollama instrumentation records it: server load time on the span."""
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: provider_name,
        A.GEN_AI_REQUEST_MODEL: model,
        A.GEN_AI_USAGE_INPUT_TOKENS: p,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: o,
    }
    if load_ms is not None:
        attrs[A.TT_SERVER_LOAD_NS] = int(load_ms * MS_NS)
    if keep_alive_s is not None:
        attrs[A.TT_REQUEST_KEEP_ALIVE_S] = keep_alive_s
    if decode_ms is not None:
        attrs[A.TT_SERVER_EVAL_NS] = int(decode_ms * MS_NS)
    begin = _ns(start)
    span = tp.get_tracer("tests").start_span(f"chat {model}", attributes=attrs, start_time=begin)
    span.end(end_time=begin + int((ms + (load_ms or 0.0)) * MS_NS))


def _load(tp: TracerProvider, model: str, start: dt.datetime, ms: float) -> None:
    attrs = {A.GEN_AI_OPERATION_NAME: A.OP_LOAD_MODEL, A.GEN_AI_REQUEST_MODEL: model}
    span = tp.get_tracer("tests").start_span(f"load_model {model}", attributes=attrs, start_time=_ns(start))
    span.end(end_time=_ns(start) + int(ms * MS_NS))


def _fleet(tp: TracerProvider, model: str, end: dt.datetime, *, minutes: float = 20, repeat: int = 2,
           scale: float = 1.0, **kwargs: Any) -> int:  # fmt: skip
    """Noiseless calls of every size in SIZES over the ``minutes`` before ``end``."""
    sizes = SIZES * repeat
    step = dt.timedelta(minutes=minutes) / len(sizes)
    for i, (p, o) in enumerate(sizes):
        start = end - dt.timedelta(minutes=minutes) + i * step
        _call(tp, model, p, o, start, scale * _true_ms(p, o), **kwargs)
    return len(sizes)


def _by_model(rows: Sequence[Estimate]) -> dict[str, Estimate]:
    return {e.model: e for e in rows}


# --- the fit ---------------------------------------------------------------------------
def test_the_fit_recovers_the_true_intercept_and_per_token_costs(
    db: str, provider: TracerProvider, now: dt.datetime
) -> None:
    calls = _fleet(provider, "llama3.2", now - dt.timedelta(minutes=1), load_ms=2.0)
    [e] = expected_latency(db, 800, 200)

    assert (e.rank, e.model, e.method, e.calls) == (1, "llama3.2", "least_squares", calls)
    assert e.intercept_ms == pytest.approx(INTERCEPT, rel=0.02)
    assert e.prefill_ms_per_token == pytest.approx(PREFILL, rel=0.02)
    assert e.decode_ms_per_token == pytest.approx(DECODE, rel=0.02)
    assert e.expected_ms == pytest.approx(_true_ms(800, 200), rel=0.02)
    assert e.warm and e.trusted and e.reason is None
    assert e.p90_ms == pytest.approx(e.expected_ms, rel=1e-3)  # no noise, no spread
    assert e.residency == "ollama_default" and e.keep_alive_s == 300
    assert e.cold_calls == 0 and e.expected_load_ms is None


def test_the_fit_from_a_rebuild_is_the_live_fit(db: str, provider: TracerProvider, now: dt.datetime) -> None:
    _fleet(provider, "llama3.2", now - dt.timedelta(minutes=1), load_ms=2.0, keep_alive_s=600)
    _fleet(provider, "qwen2.5", now - dt.timedelta(minutes=3), load_ms=1.0, scale=1.5)
    _call(provider, "qwen2.5", 400, 100, now - dt.timedelta(minutes=2), 999.0, load_ms=3000.0)
    _load(provider, "phi3", now - dt.timedelta(minutes=5), 1500.0)
    live_rows = _latency_rollups(db)
    with psycopg.connect(db) as conn:
        live = estimates(conn, 800, 200, at=now)
        conn.execute(
            "SELECT tokentrace.rebuild_rollups(min(start_time), max(start_time) + interval '1 ms')"
            " FROM tokentrace.spans"
        )
        rebuilt = estimates(conn, 800, 200, at=now)
        rebuilt_rows = conn.execute(_LATENCY_ROLLUPS).fetchall()
        conn.rollback()

    assert [e.model for e in live] == ["llama3.2", "qwen2.5", "phi3"]
    assert len(live_rows) == len(rebuilt_rows)
    for k, r in zip(live_rows, rebuilt_rows):
        assert k[:4] == r[:4] and k[-4:] == r[-4:], (k, r)
        assert k[4:-4] == pytest.approx(r[4:-4], rel=1e-9, abs=1e-9), (k, r)
    for a, b in zip(live, rebuilt):
        left, right = a.to_json(), b.to_json()
        for key, value in left.items():
            if isinstance(value, float):
                assert value == pytest.approx(right[key], rel=1e-9, abs=1e-9), key
            else:
                assert value == right[key], key


_LATENCY_ROLLUPS = """
SELECT grain, bucket, model, operation, fit_n, fit_p, fit_o, fit_y, fit_pp, fit_oo, fit_po, fit_py,
       fit_oy, fit_yy, cold_n, cold_load_ms, cold_load_ms_sq, load_ms_sq,
       last_call_end, last_load_end, keep_alive_at, keep_alive_s
FROM tokentrace.span_rollups ORDER BY grain, bucket, model, operation
"""


def _latency_rollups(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, _LATENCY_ROLLUPS)


def test_a_cold_call_is_not_averaged_into_the_warm_estimate(
    db: str, provider: TracerProvider, now: dt.datetime
) -> None:
    _fleet(provider, "llama3.2", now - dt.timedelta(minutes=30), load_ms=2.0)
    at = now - dt.timedelta(minutes=20)
    [before] = expected_latency(db, 800, 200, at=at)
    # A cold call: 4 s of load, and an inference three times what the fit says.
    _call(provider, "llama3.2", 800, 200, now - dt.timedelta(minutes=29), 3 * _true_ms(800, 200), load_ms=4000.0)
    [after] = expected_latency(db, 800, 200, at=at)

    assert after.warm_ms == pytest.approx(before.warm_ms, rel=1e-9)
    assert after.calls == before.calls
    assert (after.cold_calls, after.expected_load_ms) == (1, pytest.approx(4000.0))
    # 20 minutes after the last call, past Ollama's default 5-minute keep-alive: cold.
    assert not after.warm
    assert after.switch_cost_ms == pytest.approx(4000.0)
    assert after.expected_ms == pytest.approx(after.warm_ms + 4000.0)


def test_the_expected_load_weighs_load_spans_and_cold_calls(
    db: str, provider: TracerProvider, now: dt.datetime
) -> None:
    _fleet(provider, "llama3.2", now - dt.timedelta(minutes=10), load_ms=2.0)
    _load(provider, "llama3.2", now - dt.timedelta(minutes=12), 2000.0)
    _call(provider, "llama3.2", 100, 10, now - dt.timedelta(minutes=11), 300.0, load_ms=2000.0)
    [e] = expected_latency(db, 100, 10, at=now + dt.timedelta(hours=1))
    assert (e.loads, e.cold_calls, e.warm) == (1, 1, False)
    assert e.expected_load_ms == pytest.approx(2000.0)
    assert e.last_load == now - dt.timedelta(minutes=11) + dt.timedelta(milliseconds=2000)


# --- warm or cold ------------------------------------------------------------------------
def test_keep_alive_decides_warm_or_cold(db: str, provider: TracerProvider, now: dt.datetime) -> None:
    end = now - dt.timedelta(minutes=30)
    _fleet(provider, "asked-10m", end, load_ms=2.0, keep_alive_s=600)
    _fleet(provider, "default-5m", end, load_ms=2.0)
    _fleet(provider, "forever", end, load_ms=2.0, keep_alive_s=-1)
    _fleet(provider, "hosted", end, provider_name="openai")  # no load ever reported
    # The latest call's keep-alive is the one in force: 0 unloads right after it.
    _fleet(provider, "unloaded", end - dt.timedelta(minutes=1), load_ms=2.0, keep_alive_s=-1)
    _call(provider, "unloaded", 100, 10, end, 300.0, load_ms=2.0, keep_alive_s=0)

    def warm(at: dt.datetime) -> dict[str, bool]:
        return {e.model: e.warm for e in expected_latency(db, 100, 10, at=at)}

    last = {e.model: e.last_call for e in expected_latency(db, 100, 10)}
    assert warm(last["asked-10m"] + dt.timedelta(minutes=9)) == {
        "asked-10m": True, "default-5m": False, "forever": True, "hosted": True, "unloaded": False,
    }  # fmt: skip
    assert warm(last["default-5m"] + dt.timedelta(minutes=4)) == {
        "asked-10m": True, "default-5m": True, "forever": True, "hosted": True, "unloaded": False,
    }  # fmt: skip
    assert warm(last["asked-10m"] + dt.timedelta(minutes=11))["asked-10m"] is False
    rows = _by_model(expected_latency(db, 100, 10))
    assert (rows["asked-10m"].residency, rows["asked-10m"].keep_alive_s) == ("keep_alive", 600)
    assert rows["asked-10m"].resident_until == last["asked-10m"] + dt.timedelta(seconds=600)
    assert (rows["forever"].keep_alive_s, rows["forever"].resident_until) == (-1, None)
    assert (rows["hosted"].residency, rows["hosted"].keep_alive_s) == ("no_expiry", None)
    assert (rows["unloaded"].keep_alive_s, rows["unloaded"].resident_until) == (0, last["unloaded"])
    assert rows["default-5m"].residency == "ollama_default"


# --- ranking and trust -------------------------------------------------------------------
def test_models_rank_fastest_first_and_unknown_models_last(
    db: str, provider: TracerProvider, now: dt.datetime
) -> None:
    end = now - dt.timedelta(minutes=1)
    _fleet(provider, "slow", end, load_ms=2.0, keep_alive_s=-1, minutes=10)
    for i, (p, o) in enumerate(SIZES):
        _call(provider, "quick", p, o, end - dt.timedelta(seconds=60 - i), _true_ms(p, o, 50, 0.1, 5), load_ms=2.0)
    _call(provider, "thin", 800, 200, end, 1.0, load_ms=2.0)  # one very fast call: not to be trusted

    rows = expected_latency(db, 800, 200, models=["slow", "quick", "ghost", "thin", "quick"])
    assert [(e.rank, e.model) for e in rows] == [(1, "thin"), (2, "quick"), (3, "slow"), (4, "ghost")]
    ghost = rows[-1]
    assert (ghost.expected_ms, ghost.trusted, ghost.reason, ghost.calls, ghost.warm) == (None, False, "unseen", 0, False)
    assert (rows[0].trusted, rows[0].reason, rows[0].calls) == (False, "thin", 1)
    assert rows[1].trusted and rows[1].expected_ms == pytest.approx(_true_ms(800, 200, 50, 0.1, 5), rel=0.02)
    assert rows[1].effective_calls == pytest.approx(len(SIZES), rel=0.05)
    only_ghost = expected_latency(db, 800, 200, models=["ghost"])
    assert [(e.rank, e.model, e.reason) for e in only_ghost] == [(1, "ghost", "unseen")]


def test_old_traffic_is_stale_and_recent_traffic_outweighs_it(
    db: str, provider: TracerProvider, now: dt.datetime
) -> None:
    _fleet(provider, "llama3.2", now - dt.timedelta(hours=8), load_ms=2.0, keep_alive_s=-1)
    [old] = expected_latency(db, 800, 200)
    assert (old.trusted, old.reason) == (False, "stale")
    assert old.expected_ms == pytest.approx(_true_ms(800, 200), rel=0.02)
    # Twice as slow now: within minutes, the estimate says so (8 hours is 16 half-lives).
    for p, o in SIZES:
        _call(provider, "llama3.2", p, o, now - dt.timedelta(minutes=2), 2 * _true_ms(p, o), load_ms=2.0)
    [new] = expected_latency(db, 800, 200)
    assert new.trusted
    assert new.expected_ms == pytest.approx(2 * _true_ms(800, 200), rel=0.02)
    assert new.calls == 2 * len(SIZES) + len(SIZES)


def test_requests_all_of_one_size_fall_back_to_the_servers_per_token_timings(
    db: str, provider: TracerProvider, now: dt.datetime
) -> None:
    for i in range(10):
        _call(provider, "same", 500, 100, now - dt.timedelta(minutes=10 - i), _true_ms(500, 100),
              load_ms=2.0, decode_ms=100 * DECODE)  # fmt: skip
    [e] = expected_latency(db, 500, 300)
    assert e.method == "ratios"
    assert e.decode_ms_per_token == pytest.approx(DECODE)
    assert e.expected_ms == pytest.approx(_true_ms(500, 100) + 200 * DECODE, rel=1e-6)


# --- wrappers ------------------------------------------------------------------------------
def _span_data(trace: int, span: int, parent: int | None, model: str, p: int, o: int, start: dt.datetime,
               ms: float) -> SpanData:  # fmt: skip
    return SpanData(
        trace_id=trace.to_bytes(16, "big"),
        span_id=span.to_bytes(8, "big"),
        parent_span_id=None if parent is None else parent.to_bytes(8, "big"),
        name=f"chat {model}",
        kind="CLIENT",
        start_ns=_ns(start),
        end_ns=_ns(start) + int(ms * MS_NS),
        attributes={
            A.GEN_AI_OPERATION_NAME: "chat",
            A.GEN_AI_REQUEST_MODEL: model,
            A.GEN_AI_USAGE_INPUT_TOKENS: p,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: o,
            A.TT_REQUEST_KEEP_ALIVE_S: 600.0,
        },
        status="OK",
    )


@pytest.mark.parametrize("order", ["child first", "wrapper first"])
def test_a_wrapper_and_its_call_are_one_call_in_the_fit(db: str, now: dt.datetime, order: str) -> None:
    children, wrappers = [], []
    for i, (p, o) in enumerate(SIZES):
        start = now - dt.timedelta(minutes=10) + i * dt.timedelta(seconds=20)
        children.append(_span_data(i + 1, 2, 1, "llama3.2", p, o, start, _true_ms(p, o)))
        # A framework span over it: longer, with the same model.
        wrappers.append(_span_data(i + 1, 1, None, "llama3.2", p, o, start, 3 * _true_ms(p, o)))
    writer = SpanWriter(db)
    try:
        for batch in ([children, wrappers] if order == "child first" else [wrappers, children]):
            assert not writer.write([build_row(s) for s in batch]).rejected
    finally:
        writer.close()
    [e] = expected_latency(db, 800, 200)
    assert e.calls == len(SIZES)
    assert e.expected_ms == pytest.approx(_true_ms(800, 200), rel=0.02)
    assert e.keep_alive_s == 600
    live = _latency_rollups(db)
    with psycopg.connect(db) as conn:
        conn.execute("SELECT tokentrace.rebuild_rollups(min(start_time), max(start_time) + interval '1 ms')"
                     " FROM tokentrace.spans")  # fmt: skip
        rebuilt = conn.execute(_LATENCY_ROLLUPS).fetchall()
        conn.rollback()
    assert len(live) == len(rebuilt)
    for k, r in zip(live, rebuilt):
        assert k[:5] == r[:5] and k[-4:] == r[-4:], (k, r)
        assert k[5:-4] == pytest.approx(r[5:-4], rel=1e-9, abs=1e-6), (k, r)


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", ["NULL, 200", "-1, 200", "800, -5", "800, NULL", "20000000, 1"])
def test_bad_token_counts_are_refused_with_22023(db: str, args: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn, pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        conn.execute(f"SELECT * FROM tokentrace.expected_latency({args})")
    assert "must be a whole number from 0 to 10000000" in str(info.value)


@pytest.mark.parametrize("prompt", [-1, "abc", 1.5, True, None, 10**8])
def test_python_refuses_bad_token_counts(db: str, prompt: Any) -> None:
    with pytest.raises(ExpectedLatencyError, match="prompt_tokens"):
        expected_latency(db, prompt, 10)
    assert issubclass(ExpectedLatencyError, ValueError)


def test_a_naive_time_and_a_bad_half_life_are_refused(db: str) -> None:
    with pytest.raises(ExpectedLatencyError, match="aware"):
        expected_latency(db, 1, 1, at=dt.datetime(2026, 1, 1))
    with pytest.raises(ExpectedLatencyError, match="half_life"):
        expected_latency(db, 1, 1, half_life=dt.timedelta(0))
    with pytest.raises(ExpectedLatencyError, match="list of model names"):
        expected_latency(db, 1, 1, models="llama3.2")  # type: ignore[arg-type]

