"""``tokentrace route``, run as a user would (a subprocess), on the test database."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from tokentrace import attributes as A
from tokentrace.expected import expected_latency
from tokentrace.store.rows import SpanData, build_row
from tokentrace.store.writer import SpanWriter

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def _route(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokentrace", "route", *args], env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def _store(dsn: str) -> None:
    now = dt.datetime.now(UTC)
    spans = []
    for i, (p, o) in enumerate((p, o) for p in (100, 600, 1800) for o in (20, 120, 400)):
        for k, (model, scale) in enumerate((("llama3.2", 1.0), ("mistral", 2.0))):
            start_ns = (now - EPOCH) // dt.timedelta(microseconds=1) * 1000 - (600 - 10 * i) * 10**9
            ms = scale * (100 + 0.5 * p + 20 * o)
            spans.append(SpanData(
                trace_id=(100 * k + i + 1).to_bytes(16, "big"), span_id=(1).to_bytes(8, "big"),
                parent_span_id=None, name=f"chat {model}", kind="CLIENT", start_ns=start_ns,
                end_ns=start_ns + int(ms * 1e6), status="OK",
                attributes={A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: model,
                            A.GEN_AI_USAGE_INPUT_TOKENS: p, A.GEN_AI_USAGE_OUTPUT_TOKENS: o,
                            A.TT_REQUEST_KEEP_ALIVE_S: -1.0},
            ))  # fmt: skip
    writer = SpanWriter(dsn)
    try:
        assert not writer.write([build_row(s) for s in spans]).rejected
    finally:
        writer.close()


def test_route_prints_the_ranking_and_its_json(db: str, subprocess_env: dict[str, str]) -> None:
    _store(db)
    table = _route(subprocess_env, "--prompt-tokens", "800", "--output-tokens", "200")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "Expected latency of 800 prompt + 200 output tokens, fastest first (half-life 30 min)"
    assert lines[1].split() == ["#", "model", "expected", "ms", "p90", "ms", "warm", "load", "ms",
                                "prefill/tok", "decode/tok", "calls", "trust"]  # fmt: skip
    first, second = lines[3].split(), lines[4].split()
    assert first[:2] == ["1", "llama3.2"] and second[:2] == ["2", "mistral"]
    assert first[2] == "4,500" and second[2] == "9,000"  # 100 + 0.5·800 + 20·200, and twice that
    assert first[4] == "warm" and first[-2:] == ["9", "ok"]

    as_json = _route(subprocess_env, "--prompt-tokens", "800", "--output-tokens", "200",
                     "--model", "mistral", "--model", "ghost", "--json")  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    expected = [e.to_json() for e in expected_latency(db, 800, 200, ["mistral", "ghost"])]
    assert body == {"status": "success", "prompt_tokens": 800, "output_tokens": 200,
                    "half_life_minutes": 30.0, "estimates": expected}  # fmt: skip
    assert [(e["model"], e["reason"]) for e in body["estimates"]] == [("mistral", None), ("ghost", "unseen")]


def test_route_refuses_bad_arguments(db: str, subprocess_env: dict[str, str]) -> None:
    bad = _route(subprocess_env, "--prompt-tokens", "-3", "--output-tokens", "200")
    assert bad.returncode == 2 and "must be a whole number of tokens" in bad.stderr
    missing = _route(subprocess_env, "--prompt-tokens", "3")
    assert missing.returncode == 2 and "--output-tokens" in missing.stderr
    unknown = _route(subprocess_env, "--prompt-tokens", "3", "--output-tokens", "3", "--model", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr == "tokentrace: unknown model 'nope': no call or load in the last 14 days\n"
