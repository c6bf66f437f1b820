"""Spans into PostgreSQL through the real SDK, processor and exporter."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tokentrace
from tokentrace import attributes as A
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.processor import TokenEfficiencySpanProcessor
from tests.helpers import query

NOW_NS = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1e9)
SEC = 1_000_000_000


def _row(dsn: str, name: str) -> dict[str, Any]:
    rows = query(
        dsn,
        "SELECT model, operation, provider, input_tokens, output_tokens, duration_ms, inference_ms,"
        " ms_per_token, decode_ms_per_token, prefill_ms_per_token, ttft_ms, load_ms, token_source,"
        " status, error_type, attributes, service_name FROM tokentrace.spans WHERE name = %s",
        (name,),
    )
    assert len(rows) == 1, rows
    keys = ("model", "operation", "provider", "input_tokens", "output_tokens", "duration_ms",
            "inference_ms", "ms_per_token", "decode_ms_per_token", "prefill_ms_per_token", "ttft_ms",
            "load_ms", "token_source", "status", "error_type", "attributes", "service_name")
    return dict(zip(keys, rows[0]))


def _recording_provider(dsn: str, with_processor: bool = True) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    exporting = SimpleSpanProcessor(PostgresSpanExporter(dsn))
    provider.add_span_processor(TokenEfficiencySpanProcessor(exporting) if with_processor else exporting)
    return provider


def _span(provider: TracerProvider, name: str, attrs: dict[str, Any], seconds: float, start_ns: int = NOW_NS) -> None:
    span = provider.get_tracer("tests").start_span(name, attributes=attrs, start_time=start_ns)
    span.end(end_time=start_ns + int(seconds * SEC))


# --- the manual API ----------------------------------------------------------------
def test_manual_api_records_loads_and_inferences(configured: str) -> None:
    with tokentrace.model_load("llama3.2", provider="ollama"):
        pass
    with tokentrace.inference("llama3.2", provider="ollama") as call:
        call.set_tokens(input=12, output=30)
    tokentrace.log_load_latency("qwen2.5", 2.5)
    tokentrace.log_load_latency("qwen2.5-broken", 0.75, success=False)
    tokentrace.log_thought_latency("qwen2.5", 1.5, tokens_generated=60, prompt_tokens=20)
    assert tokentrace.flush()

    load = _row(configured, "load_model llama3.2")
    assert (load["operation"], load["provider"], load["model"]) == ("load_model", "ollama", "llama3.2")
    assert load["load_ms"] == load["duration_ms"]
    call_row = _row(configured, "chat llama3.2")
    assert (call_row["input_tokens"], call_row["output_tokens"]) == (12, 30)
    assert call_row["ms_per_token"] == pytest.approx(call_row["duration_ms"] / 30)
    assert call_row["token_source"] == "reported"

    logged_load = _row(configured, "load_model qwen2.5")
    assert logged_load["duration_ms"] == 2500.0
    assert logged_load["load_ms"] == 2500.0
    failed = _row(configured, "load_model qwen2.5-broken")
    assert (failed["status"], failed["error_type"], failed["duration_ms"]) == ("ERROR", "load_failed", 750.0)
    thought = _row(configured, "chat qwen2.5")
    assert (thought["duration_ms"], thought["input_tokens"], thought["output_tokens"]) == (1500.0, 20, 60)
    assert thought["ms_per_token"] == 25.0


def test_exceptions_are_recorded_and_reraised_unchanged(configured: str) -> None:
    class Boom(RuntimeError):
        pass

    error = Boom("model crashed")
    with pytest.raises(Boom) as caught:
        with tokentrace.inference("m-err"):
            raise error
    assert caught.value is error

    async def load() -> None:
        async with tokentrace.model_load("m-async-err"):
            raise ValueError("no weights")

    with pytest.raises(ValueError, match="no weights"):
        asyncio.run(load())
    tokentrace.flush()
    row = _row(configured, "chat m-err")
    assert (row["status"], row["error_type"]) == ("ERROR", "test_exceptions_are_recorded_and_reraised_unchanged.<locals>.Boom")
    assert _row(configured, "load_model m-async-err")["error_type"] == "ValueError"


def test_async_inference(configured: str) -> None:
    async def call() -> None:
        async with tokentrace.inference("m-async", provider="vllm", operation="text_completion") as c:
            c.set_tokens(input=1, output=2)

    asyncio.run(call())
    tokentrace.flush()
    row = _row(configured, "text_completion m-async")
    assert (row["operation"], row["provider"], row["output_tokens"]) == ("text_completion", "vllm", 2)


# --- every dialect, with and without the processor ----------------------------------
DIALECTS: dict[str, dict[str, Any]] = {
    "genai-current": {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": "llama3", "gen_ai.response.model": "llama3:8b",
        "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 40,
    },
    "genai-deprecated": {
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 40,
    },
    "openllmetry": {
        "gen_ai.system": "Ollama", "llm.request.type": "chat", "gen_ai.request.model": "llama3",
        "gen_ai.response.model": "llama3:8b", "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 40, "llm.usage.total_tokens": 51,
    },
    "openinference": {
        "openinference.span.kind": "LLM", "llm.model_name": "mistral", "llm.provider": "ollama",
        "llm.token_count.prompt": 11, "llm.token_count.completion": 40, "llm.token_count.total": 51,
    },
    "openlit": {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "ollama", "gen_ai.request.model": "phi3",
        "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 40, "gen_ai.request.stream": True,
        "gen_ai.server.time_to_first_token": 0.25, "gen_ai.client.token.usage": 51,
    },
}
EXPECTED_MODEL = {
    "genai-current": "llama3:8b", "genai-deprecated": "gpt-4o-mini", "openllmetry": "llama3:8b",
    "openinference": "mistral", "openlit": "phi3",
}


@pytest.mark.parametrize("with_processor", [True, False], ids=["processor", "store-only"])
@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_each_dialect_lands_with_tokens_and_ms_per_token(db: str, dialect: str, with_processor: bool) -> None:
    provider = _recording_provider(db, with_processor)
    _span(provider, f"span-{dialect}", DIALECTS[dialect], seconds=2.0)
    provider.shutdown()
    row = _row(db, f"span-{dialect}")
    assert row["model"] == EXPECTED_MODEL[dialect]
    assert (row["input_tokens"], row["output_tokens"]) == (11, 40)
    assert row["duration_ms"] == 2000.0
    assert row["ms_per_token"] == 50.0
    assert row["attributes"]["tokentrace.ms_per_token"] == 50.0
    assert row["service_name"] == "tests"
    if dialect == "openlit":
        assert row["ttft_ms"] == 250.0


def test_processor_puts_figures_on_spans_for_any_exporter() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(TokenEfficiencySpanProcessor(SimpleSpanProcessor(memory)))
    _span(provider, "x", DIALECTS["openinference"], seconds=1.0)
    (span,) = memory.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["tokentrace.ms_per_token"] == 25.0
    assert span.attributes["tokentrace.token_source"] == "reported"


# --- efficiency() against an independent computation --------------------------------
def _expected_efficiency(spans: list[dict[str, Any]], since_ns: int, model: str | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in spans:
        if s["start_ns"] < since_ns or (model and s["model"] != model):
            continue
        m = out.setdefault(s["model"], {"calls": 0, "out": 0, "ms": 0.0, "weighted_out": 0, "loads": 0, "load_ms": 0.0, "errors": 0, "in": 0})
        m["errors"] += s["error"]
        if s["load"]:
            m["loads"] += 1
            m["load_ms"] += s["ms"]
            continue
        m["calls"] += 1
        m["in"] += s["in"]
        if s["out"] is not None:
            m["out"] += s["out"]
            if s["out"] > 0:
                m["ms"] += s["ms"]
                m["weighted_out"] += s["out"]
    return out


def test_efficiency_is_token_weighted_and_respects_window_and_filter(db: str) -> None:
    rng = random.Random(1234)
    provider = _recording_provider(db)
    spans: list[dict[str, Any]] = []
    for i in range(300):
        model = rng.choice(["fast", "medium", "slow"])
        load = rng.random() < 0.1
        error = (not load) and rng.random() < 0.05
        out_tokens = None if rng.random() < 0.05 else rng.choice([0, rng.randint(1, 800)])
        in_tokens = rng.randint(1, 400)
        ms = rng.uniform(5, 8000)
        start = NOW_NS - rng.randint(60, 30 * 3600) * SEC  # some before the 24 h window
        attrs: dict[str, Any] = {"gen_ai.request.model": model}
        if load:
            attrs["gen_ai.operation.name"] = "load_model"
        else:
            attrs.update({"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": in_tokens})
            if out_tokens is not None:
                attrs["gen_ai.usage.output_tokens"] = out_tokens
        span = provider.get_tracer("t").start_span(f"s{i}", attributes=attrs, start_time=start)
        if error:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, "x"))
        end = start + int(ms * 1e6)
        span.end(end_time=end)
        spans.append({"model": model, "load": load, "error": int(error), "out": out_tokens,
                      "in": 0 if load else in_tokens, "ms": (end - start) / 1e6, "start_ns": start})
    provider.shutdown()

    for hours, model in [(24, None), (6, None), (24, "slow"), (48, "fast")]:
        since = NOW_NS - hours * 3600 * SEC + 30 * SEC  # slack: the test runs a little after NOW_NS
        expected = _expected_efficiency(spans, since, model)
        rows = query(
            db,
            "SELECT model, calls, input_tokens, output_tokens, weighted_ms_per_token, loads, avg_load_ms, errors"
            " FROM tokentrace.efficiency(%s, %s)",
            (dt.timedelta(hours=hours), model),
        )
        got = {r[0]: r for r in rows}
        assert set(got) == set(expected)
        for name, e in expected.items():
            _, calls, tin, tout, weighted, loads, avg_load, errors = got[name]
            assert (calls, tin, tout, loads, errors) == (e["calls"], e["in"], e["out"], e["loads"], e["errors"])
            assert weighted == pytest.approx(e["ms"] / e["weighted_out"], rel=1e-9)
            if e["loads"]:
                assert avg_load == pytest.approx(e["load_ms"] / e["loads"], rel=1e-9)


def test_efficiency_24h_view_matches_function(db: str) -> None:
    provider = _recording_provider(db)
    _span(provider, "a", {"gen_ai.request.model": "v", "gen_ai.usage.output_tokens": 10}, 1.0)
    provider.shutdown()
    assert query(db, "SELECT * FROM tokentrace.efficiency_24h") == query(db, "SELECT * FROM tokentrace.efficiency()")


# --- hostile values: stored or refused with a clear log line, the rest kept ---------
def test_hostile_values_do_not_sink_the_batch(db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tokentrace")
    provider = _recording_provider(db)
    cases: dict[str, tuple[dict[str, Any], float]] = {
        "zero": ({"gen_ai.request.model": "h", "gen_ai.usage.output_tokens": 0}, 1.0),
        "missing": ({"gen_ai.request.model": "h"}, 1.0),
        "negative": ({"gen_ai.request.model": "h", "gen_ai.usage.output_tokens": -5}, 1.0),
        "string": ({"gen_ai.request.model": "h", "gen_ai.usage.output_tokens": "12"}, 1.2),
        "garbage": ({"gen_ai.request.model": "h", "gen_ai.usage.output_tokens": "lots"}, 1.0),
        "nul": ({"gen_ai.request.model": "h\x00nul", "note": "a\x00b", "gen_ai.usage.output_tokens": 2}, 1.0),
        "huge": ({"gen_ai.request.model": "h", "blob": "y" * 1_048_576, "gen_ai.usage.output_tokens": 4}, 1.0),
        "unicode": ({"gen_ai.request.model": "модель-🚀", "gen_ai.usage.output_tokens": 8}, 1.0),
        "backwards": ({"gen_ai.request.model": "h", "gen_ai.usage.output_tokens": 8}, -1.0),
    }
    tracer = provider.get_tracer("t")
    spans = []
    for name, (attrs, seconds) in cases.items():
        s = tracer.start_span(name, attributes=attrs, start_time=NOW_NS)
        s.end(end_time=NOW_NS + int(seconds * SEC))
        spans.append(s)
    provider.shutdown()

    exporter = PostgresSpanExporter(db)
    assert exporter.export(spans) == SpanExportResult.SUCCESS  # all again: duplicates, no error
    exporter.shutdown()

    rows = {r[0]: r[1:] for r in query(
        db, "SELECT name, model, output_tokens, ms_per_token, token_source, duration_ms,"
        " length(attributes->>'blob'), attributes->>'note' FROM tokentrace.spans")}
    assert set(rows) == set(cases)
    assert rows["zero"][1:4] == (0, None, "reported")
    assert rows["missing"][1:4] == (None, None, "missing")
    assert rows["negative"][1:4] == (None, None, "missing")
    assert rows["string"][1:4] == (12, 100.0, "reported")
    assert rows["garbage"][1:4] == (None, None, "missing")
    assert rows["nul"][0] == "h\ufffdnul" and rows["nul"][6] == "a\ufffdb"
    assert rows["huge"][5] == 65_536 + len("…[truncated 983040 chars]")
    assert rows["unicode"][0] == "модель-🚀" and rows["unicode"][2] == 125.0
    assert rows["backwards"][2:5] == (None, "reported", None)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "span 'nul' stored with changes: attribute key" not in messages
    assert "span 'nul' stored with changes: gen_ai.request.model: NUL replaced" in messages
    assert "span 'huge' stored with changes: blob: truncated 983040 chars" in messages
    assert "span 'backwards' stored with changes: span ends before it starts" in messages


# --- idempotency --------------------------------------------------------------------
def _finished(provider_spans: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    return provider_spans.get_finished_spans()


def test_same_batch_twice_stores_each_span_once(db: str) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(TokenEfficiencySpanProcessor(SimpleSpanProcessor(memory)))
    for i in range(50):
        _span(provider, f"d{i}", {"gen_ai.request.model": "dup", "gen_ai.usage.output_tokens": 5}, 0.5)
    spans = list(_finished(memory))
    exporter = PostgresSpanExporter(db)
    assert exporter.export(spans[:30]) == SpanExportResult.SUCCESS
    assert exporter.export(spans) == SpanExportResult.SUCCESS  # a retry that overlaps
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert query(db, "SELECT count(*), count(DISTINCT span_id) FROM tokentrace.spans") == [(50, 50)]
    assert exporter.stats["exported"] == 50
    assert exporter.stats["duplicates"] == 80
    exporter.shutdown()
    exporter.shutdown()  # idempotent
    assert exporter.export(spans) == SpanExportResult.FAILURE


# --- partitions ---------------------------------------------------------------------
def test_any_timestamp_gets_a_partition(db: str) -> None:
    provider = _recording_provider(db)
    old = int(dt.datetime(2001, 9, 9, 12, tzinfo=dt.timezone.utc).timestamp() * SEC)
    future = int(dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc).timestamp() * SEC)
    _span(provider, "old", {"gen_ai.request.model": "p"}, 1.0, start_ns=old)
    _span(provider, "future", {"gen_ai.request.model": "p"}, 1.0, start_ns=future)
    _span(provider, "epoch", {"gen_ai.request.model": "p"}, 1.0, start_ns=1)
    provider.shutdown()
    assert {r[0] for r in query(db, "SELECT name FROM tokentrace.spans")} == {"old", "future", "epoch"}
    partitions = {r[0] for r in query(db, "SELECT partition_name FROM tokentrace.span_partitions")}
    assert {"spans_20010909", "spans_22000101", "spans_19700101"} <= partitions


def test_exporter_builds_with_no_arguments(monkeypatch: pytest.MonkeyPatch, db: str) -> None:
    monkeypatch.setenv("TOKENTRACE_DSN", db)
    exporter = PostgresSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _span(provider, "from-env", {"gen_ai.request.model": "env", "gen_ai.usage.output_tokens": 1}, 0.1)
    provider.shutdown()
    assert query(db, "SELECT model FROM tokentrace.spans WHERE name = 'from-env'") == [("env",)]
