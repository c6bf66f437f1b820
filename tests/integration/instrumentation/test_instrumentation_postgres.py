"""Instrumented clients all the way into PostgreSQL: in process, one line, and zero code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.fakeservers import FakeOllama, FakeOpenAI, Script
from tests.helpers import query
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.instrumentation.ollama import OllamaInstrumentor
from tokentrace.instrumentation.openai import OpenAIInstrumentor
from tokentrace.processor import TokenEfficiencySpanProcessor

TIMED = Script(
    tokens=["Hello", " there", "!"],
    load_ns=1_500_000,
    prompt_eval_count=7,
    prompt_eval_ns=2_100_000,
    eval_ns=4_500_000,
    total_ns=9_000_000,
)
CACHED = Script(tokens=["a", "b"], prompt_eval_count=None, eval_ns=1_000_000)
# A real (cold) load, above the default min_load_ms (100 ms): a load_model span. TIMED's
# 1.5 ms is what a warm Ollama reports: recorded on the call, no load_model span.
COLD = dataclasses.replace(TIMED, load_ns=250_000_000)
# For the child processes, whose rows must all have a positive ms/token (wall time
# minus the reported load): a load shorter than any call's wall time, and a stream
# paced at least as slowly as the timings it reports, as a real server's is. (TIMED's
# stream answers in about 1 ms while reporting a 1.5 ms load: its ms/token is 0.)
PACED = dataclasses.replace(
    TIMED, load_ns=500_000, first_chunk_delay_s=0.003, chunk_delay_s=0.0015
)
COLUMNS = (
    "name", "kind", "operation", "provider", "model", "input_tokens", "output_tokens",
    "duration_ms", "inference_ms", "ms_per_token", "decode_ms_per_token",
    "prefill_ms_per_token", "ttft_ms", "load_ms", "token_source", "status", "error_type",
    "service_name", "parent_span_id",
)  # fmt: skip


def _rows(dsn: str) -> list[dict[str, Any]]:
    found = query(
        dsn, f"SELECT {', '.join(COLUMNS)} FROM tokentrace.spans ORDER BY start_time, name"
    )
    return [dict(zip(COLUMNS, row)) for row in found]


def _servers(scripts: dict[str, Script]) -> Iterator[tuple[FakeOllama, FakeOpenAI]]:
    with FakeOllama(dict(scripts)) as native, FakeOpenAI(dict(scripts)) as compatible:
        yield native, compatible


@pytest.fixture
def servers() -> Iterator[tuple[FakeOllama, FakeOpenAI]]:
    yield from _servers({"llama3.2": TIMED, "cached": CACHED, "cold": COLD})


@pytest.fixture
def paced_servers() -> Iterator[tuple[FakeOllama, FakeOpenAI]]:
    yield from _servers({"llama3.2": PACED})


def test_instrumented_calls_become_rows_with_efficiency(
    db: str, servers: tuple[FakeOllama, FakeOpenAI]
) -> None:
    native, compatible = servers
    provider = TracerProvider(resource=Resource.create({"service.name": "instrumentation-tests"}))
    provider.add_span_processor(
        TokenEfficiencySpanProcessor(SimpleSpanProcessor(PostgresSpanExporter(db)))
    )
    OllamaInstrumentor().instrument(tracer_provider=provider)
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    try:
        with ollama.Client(host=native.url) as client:
            client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
            client.chat(model="cold", messages=[{"role": "user", "content": "Hi"}])
            client.generate(model="cached", prompt="Hi")
            with pytest.raises(ollama.ResponseError):
                client.chat(model="missing", messages=[])
        with openai.OpenAI(base_url=f"{compatible.url}/v1", api_key="k", max_retries=0) as oa:
            list(
                oa.chat.completions.create(
                    model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True
                )
            )
    finally:
        OllamaInstrumentor().uninstrument()
        OpenAIInstrumentor().uninstrument()
        provider.shutdown()

    rows = {row["name"]: row for row in _rows(db)}
    assert set(rows) == {
        "load_model cold",
        "chat cold",
        "chat llama3.2",
        "text_completion cached",
        "chat missing",
    }
    chats = [r for r in _rows(db) if r["name"] == "chat llama3.2"]
    assert len(chats) == 2  # Ollama's native API and its OpenAI-compatible one
    native_chat = next(r for r in chats if r["provider"] == "ollama")
    assert native_chat["kind"] == "CLIENT"
    assert (native_chat["input_tokens"], native_chat["output_tokens"]) == (7, 3)
    assert native_chat["decode_ms_per_token"] == pytest.approx(1.5)
    assert native_chat["prefill_ms_per_token"] == pytest.approx(0.3)
    assert native_chat["load_ms"] == pytest.approx(1.5)
    assert native_chat["inference_ms"] == pytest.approx(max(native_chat["duration_ms"] - 1.5, 0))
    assert native_chat["token_source"] == "reported"
    assert native_chat["service_name"] == "instrumentation-tests"

    load = rows["load_model cold"]
    assert (load["operation"], load["kind"], load["provider"], load["model"]) == (
        "load_model",
        "INTERNAL",
        "ollama",
        "cold",
    )
    assert load["duration_ms"] == pytest.approx(250) and load["load_ms"] == pytest.approx(250)
    assert load["parent_span_id"] is not None
    assert rows["chat cold"]["load_ms"] == pytest.approx(250)

    cached = rows["text_completion cached"]
    assert cached["input_tokens"] is None and cached["output_tokens"] == 2  # never a false 0
    assert cached["decode_ms_per_token"] == pytest.approx(0.5)

    assert (rows["chat missing"]["status"], rows["chat missing"]["error_type"]) == (
        "ERROR",
        "ResponseError",
    )

    streamed = next(r for r in chats if r["provider"] == "openai_compatible")
    assert streamed["output_tokens"] == 3 and streamed["token_source"] == "estimated"
    assert streamed["ttft_ms"] is not None and streamed["ms_per_token"] is not None


CLIENT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import ollama, openai
    {setup}
    with ollama.Client(host=os.environ["FAKE_OLLAMA"]) as client:
        client.chat(model="llama3.2", messages=[{{"role": "user", "content": "Hi"}}])
        for _ in client.generate(model="llama3.2", prompt="Hi", stream=True):
            pass
    with openai.OpenAI(base_url=os.environ["FAKE_OPENAI"] + "/v1", api_key="k") as oa:
        oa.chat.completions.create(model="llama3.2", messages=[{{"role": "user", "content": "Hi"}}])
    {teardown}
    """
)


def _run(
    cmd: list[str], env: dict[str, str], tmp_path: Path, setup: str = "", teardown: str = ""
) -> None:
    script = tmp_path / "app.py"
    script.write_text(CLIENT_SCRIPT.format(setup=setup, teardown=teardown))
    done = subprocess.run(
        [*cmd, str(script)], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _child_env(env: dict[str, str], servers: tuple[FakeOllama, FakeOpenAI]) -> dict[str, str]:
    native, compatible = servers
    return {
        **env,
        "FAKE_OLLAMA": native.url,
        "FAKE_OPENAI": compatible.url,
        "OTEL_SERVICE_NAME": "zero-code-app",
    }


def _assert_rows(db: str) -> None:
    rows = _rows(db)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    # PACED reports a warm Ollama's 0.5 ms load_duration: on the rows, not a load span
    # (the default min_load_ms applies through tokentrace.instrument() and zero-code).
    assert sorted(by_name) == ["chat llama3.2", "text_completion llama3.2"]
    assert {r["provider"] for r in by_name["chat llama3.2"]} == {"ollama", "openai_compatible"}
    native = [r for r in rows if r["provider"] == "ollama"]
    assert len(native) == 2 and all(r["load_ms"] == pytest.approx(0.5) for r in native)
    for row in by_name["chat llama3.2"] + by_name["text_completion llama3.2"]:
        assert row["ms_per_token"] is not None and row["ms_per_token"] > 0
        assert row["service_name"] == "zero-code-app"
    streamed = by_name["text_completion llama3.2"][0]
    assert streamed["decode_ms_per_token"] == pytest.approx(1.5)
    assert streamed["ttft_ms"] is not None


def test_one_line_instrument_writes_rows(
    db: str,
    subprocess_env: dict[str, str],
    paced_servers: tuple[FakeOllama, FakeOpenAI],
    tmp_path: Path,
) -> None:
    setup = (
        "import tokentrace\n"
        "names = tokentrace.instrument()\n"
        "assert {'ollama', 'openai'} <= set(names), names\n"
        "assert tokentrace.instrument() == names  # a second call instruments nothing twice"
    )
    env = _child_env(subprocess_env, paced_servers)
    _run([sys.executable], env, tmp_path, setup, "tokentrace.flush()")
    _assert_rows(db)


def test_opentelemetry_instrument_zero_code_writes_rows(
    db: str,
    subprocess_env: dict[str, str],
    paced_servers: tuple[FakeOllama, FakeOpenAI],
    tmp_path: Path,
) -> None:
    pytest.importorskip(
        "opentelemetry.distro", reason="opentelemetry-instrument configures the SDK via a distro"
    )
    launcher = Path(sys.executable).parent / "opentelemetry-instrument"
    env = {
        **_child_env(subprocess_env, paced_servers),
        "OTEL_TRACES_EXPORTER": "tokentrace",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        # tokentrace's instrumentors alone: OpenLLMetry's, also installed for the tests,
        # are loaded beside them in test_beside_openllmetry.py.
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "ollama,openai",
    }
    # Without tokentrace's processor on the span, the store derives ms/token itself.
    _run([str(launcher), sys.executable], env, tmp_path)
    _assert_rows(db)
