"""``GET /telemetry/expected-latency`` against a real receiver, fed over OTLP/HTTP."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.integration.receiver.clients import Http, pb_request
from tests.integration.receiver.conftest import StartReceiver
from tokentrace import attributes as A
from tokentrace.expected import expected_latency
from tokentrace.receiver.server import Receiver

PATH = "/telemetry/expected-latency"
SIZES = list(itertools.product((50, 400, 1500), (20, 100, 300)))


@pytest.fixture
def http(receiver: Receiver) -> Iterator[Http]:
    client = Http(receiver.http_port)
    yield client
    client.close()


def _kv(key: str, value: int | float | str) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def _request(model: str, intercept: float, a: float, b: float, salt: int) -> bytes:
    """One span per size, ending over the last few minutes, noiseless, forever kept alive."""
    now = time.time_ns()
    spans = []
    for i, (p, o) in enumerate(SIZES * 2):
        start = now - (5 * 60 - i * 5) * 1_000_000_000
        ms = intercept + a * p + b * o
        spans.append(Span(
            trace_id=(salt * 1000 + i + 1).to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"chat {model}",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start,
            end_time_unix_nano=start + int(ms * 1_000_000),
            attributes=[
                _kv(A.GEN_AI_OPERATION_NAME, "chat"),
                _kv(A.GEN_AI_REQUEST_MODEL, model),
                _kv(A.GEN_AI_USAGE_INPUT_TOKENS, p),
                _kv(A.GEN_AI_USAGE_OUTPUT_TOKENS, o),
                _kv(A.TT_SERVER_LOAD_NS, 2_000_000),
                _kv(A.TT_REQUEST_KEEP_ALIVE_S, -1.0),
            ],
        ))  # fmt: skip
    return pb_request(spans)


def test_the_ranking_over_http_is_the_python_ranking(http: Http, db: str) -> None:
    assert http.post(_request("llama3.2", 100.0, 0.5, 20.0, 1)).status == 200
    assert http.post(_request("qwen2.5", 50.0, 0.2, 10.0, 2)).status == 200

    result = http.get(f"{PATH}?prompt_tokens=800&output_tokens=200")
    assert result.status == 200
    body = result.json()
    assert body["status"] == "success"
    assert (body["prompt_tokens"], body["output_tokens"], body["half_life_minutes"]) == (800, 200, 30)
    assert body["estimates"] == [e.to_json() for e in expected_latency(db, 800, 200)]
    first, second = body["estimates"]
    assert (first["rank"], first["model"], second["model"]) == (1, "qwen2.5", "llama3.2")
    assert first["expected_ms"] == pytest.approx(50 + 0.2 * 800 + 10 * 200, rel=0.02)
    assert second["expected_ms"] == pytest.approx(100 + 0.5 * 800 + 20 * 200, rel=0.02)
    assert first["warm"] is True and first["keep_alive_s"] == -1 and first["trusted"] is True

    # model: repeatable, and comma-separated; a model never seen ranks last.
    for query in ("model=llama3.2&model=ghost", "model=llama3.2,ghost", "model=ghost,llama3.2"):
        rows = http.get(f"{PATH}?prompt_tokens=800&output_tokens=200&{query}").json()["estimates"]
        assert [(r["model"], r["reason"]) for r in rows] == [("llama3.2", None), ("ghost", "unseen")]


@pytest.mark.parametrize(
    "query,message",
    [
        ("output_tokens=200", "prompt_tokens is required"),
        ("prompt_tokens=800", "output_tokens is required"),
        ("prompt_tokens=-1&output_tokens=200", "prompt_tokens must be a whole number"),
        ("prompt_tokens=1.5&output_tokens=200", "prompt_tokens must be a whole number"),
        ("prompt_tokens=abc&output_tokens=200", "prompt_tokens must be a whole number"),
        ("prompt_tokens=800&output_tokens=99999999999", "output_tokens must be from 0 to 10,000,000"),
        ("prompt_tokens=800&prompt_tokens=900&output_tokens=1", "'prompt_tokens' given more than once"),
        ("prompt_tokens=800&output_tokens=1&hours=2", "unknown query parameter 'hours'"),
        ("prompt_tokens=800&output_tokens=1&model=", "model must name at least one model"),
        ("prompt_tokens=800&output_tokens=1&model=nope", "unknown model 'nope'"),
        ("prompt_tokens=800&output_tokens=1&half_life_minutes=0", "half_life_minutes must be"),
        ("prompt_tokens=800&output_tokens=1&at=yesterday", "at must be an ISO 8601 time"),
        ("prompt_tokens=800&output_tokens=1&at=2026-01-01T00:00:00", "aware datetime"),
    ],
)
def test_bad_parameters_are_400_with_a_message(http: Http, db: str, query: str, message: str) -> None:
    assert http.post(_request("llama3.2", 100.0, 0.5, 20.0, 3)).status == 200
    result = http.get(f"{PATH}?{query}")
    assert result.status == 400, result.body
    body = result.json()
    assert body["status"] == "error" and message in body["error"], body


def test_it_asks_for_the_bearer_token_as_the_other_reports_do(start_receiver: StartReceiver) -> None:
    client = Http(start_receiver(auth_token="s3cret").http_port)
    try:
        assert client.get(f"{PATH}?prompt_tokens=1&output_tokens=1").status == 401
        ok = client.get(f"{PATH}?prompt_tokens=1&output_tokens=1", Authorization="Bearer s3cret")
        assert ok.status == 200 and ok.json() == {
            "status": "success", "prompt_tokens": 1, "output_tokens": 1, "half_life_minutes": 30.0,
            "estimates": [],
        }  # fmt: skip
    finally:
        client.close()
