"""Zero code, two instrumentations: the real ``opentelemetry-instrument`` loads OpenLLMetry's
Ollama and OpenAI instrumentors and tokentrace's, in either order, and each model call
is one counted call in PostgreSQL, with its decode ms/token.

How the order is chosen. ``opentelemetry-instrument`` instruments in the order
``importlib.metadata.entry_points(group="opentelemetry_instrumentor")`` lists the
entry points: the order in which distributions are found along ``sys.path``, and
within one directory, the order the file system lists it (so on one machine
OpenLLMetry's come first, on another tokentrace's). Each run here puts a copy of
one side's ``*.dist-info`` (metadata only: the code is still imported from
site-packages) in a directory on ``PYTHONPATH``, which ``sys.path`` searches
before site-packages, as it does in deployments that inject instrumentation
packages that way (the OpenTelemetry operator does). Nothing is instrumented by
hand and nothing is disabled: the loader, the entry points and every wrapper are
the real ones. The child checks that the loader saw the order intended.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeservers import FakeOllama, FakeOpenAI, Script
from tests.helpers import query

pytest.importorskip("opentelemetry.instrumentation.ollama", reason="OpenLLMetry's (test extra)")

MODEL = "llama3.2"
QWEN = "qwen2.5"
TIMED = Script(
    tokens=["Hello", " there", "!"],
    load_ns=500_000,
    prompt_eval_count=7,
    prompt_eval_ns=2_100_000,
    eval_ns=4_500_000,
    total_ns=9_000_000,
)
LLAMACPP = dataclasses.replace(
    TIMED, llamacpp_timings={"prompt_n": 7, "prompt_ms": 2.1, "predicted_n": 3, "predicted_ms": 4.5}
)
OPENLLMETRY = ("opentelemetry-instrumentation-ollama", "opentelemetry-instrumentation-openai")

APP = textwrap.dedent(
    """
    import os, sys
    from opentelemetry.util._importlib_metadata import entry_points
    from opentelemetry.instrumentation.ollama import OllamaInstrumentor
    import ollama, openai

    names = [e.name for e in entry_points(group="opentelemetry_instrumentor")]
    for theirs in ("ollama", "openai"):  # OpenLLMetry's entry points, and tokentrace's
        ours_first = names.index("tokentrace_" + theirs) < names.index(theirs)
        assert ours_first == (sys.argv[1] == "tokentrace"), names  # the order intended
    assert OllamaInstrumentor().is_instrumented_by_opentelemetry  # OpenLLMetry's is loaded

    with ollama.Client(host=os.environ["FAKE_OLLAMA"]) as client:
        reply = client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    assert reply.message.content == "Hello there!"
    with openai.OpenAI(base_url=os.environ["FAKE_OPENAI"] + "/v1", api_key="k") as oa:
        done = oa.chat.completions.create(
            model="qwen2.5", messages=[{"role": "user", "content": "Hi"}]
        )
    assert done.choices[0].message.content == "Hello there!"
    """
)


@pytest.fixture
def servers() -> Iterator[tuple[FakeOllama, FakeOpenAI]]:
    with FakeOllama({MODEL: TIMED}) as native, FakeOpenAI({QWEN: LLAMACPP}) as compatible:
        yield native, compatible


def _found_first(tmp_path: Path, side: str) -> Path:
    """A directory holding a copy of ``side``'s distribution metadata, to go on PYTHONPATH."""
    front = tmp_path / f"{side}-first"
    front.mkdir()
    names = ("tokentrace",) if side == "tokentrace" else OPENLLMETRY
    for name in names:
        dist = importlib.metadata.distribution(name)
        source = Path(str(dist._path))  # type: ignore[attr-defined]
        shutil.copytree(source, front / source.name)
    return front


def _run(env: dict[str, str], tmp_path: Path, first: str) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    launcher = Path(sys.executable).parent / "opentelemetry-instrument"
    child_env = {
        **env,
        "PYTHONPATH": str(_found_first(tmp_path, first)),
        "OTEL_TRACES_EXPORTER": "tokentrace",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "two-instrumentations",
    }
    child_env.pop("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", None)
    done = subprocess.run(
        [str(launcher), sys.executable, str(app), first],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _calls(db: str, model: str) -> list[dict[str, Any]]:
    columns = ("name", "operation", "output_tokens", "decode_ms_per_token", "service_name")
    rows = query(
        db,
        f"SELECT {', '.join(columns)} FROM tokentrace.spans"
        " WHERE model = %s AND operation IS DISTINCT FROM 'load_model' ORDER BY start_time",
        (model,),
    )
    return [dict(zip(columns, row)) for row in rows]


@pytest.mark.parametrize("first", ["tokentrace", "openllmetry"])
def test_each_call_is_counted_once_with_its_decode_figure(
    db: str,
    subprocess_env: dict[str, str],
    servers: tuple[FakeOllama, FakeOpenAI],
    tmp_path: Path,
    first: str,
) -> None:
    native, compatible = servers
    env = {**subprocess_env, "FAKE_OLLAMA": native.url, "FAKE_OPENAI": compatible.url}
    _run(env, tmp_path, first)

    for model in (MODEL, QWEN):
        found = query(
            db,
            "SELECT calls, output_tokens, decode_ms_per_token"
            " FROM tokentrace.efficiency('1 hour', %s)",
            (model,),
        )
        assert len(found) == 1, (model, found)
        calls, output_tokens, decode = found[0]
        assert (calls, output_tokens) == (1, 3), model
        assert decode == pytest.approx(1.5), model

    # tokentrace's wrapper of ollama's Client._request stays on top whatever the
    # order (OpenLLMetry's below it skips the call): the row is tokentrace's.
    assert _calls(db, MODEL) == [
        {
            "name": f"chat {MODEL}",
            "operation": "chat",
            "output_tokens": 3,
            "decode_ms_per_token": pytest.approx(1.5),
            "service_name": "two-instrumentations",
        }
    ]
    # On openai's create(), whichever is instrumented last runs first: OpenLLMetry's,
    # when tokentrace's was loaded first, and tokentrace's facts are on its span.
    assert _calls(db, QWEN) == [
        {
            "name": "openai.chat" if first == "tokentrace" else f"chat {QWEN}",
            "operation": "chat",
            "output_tokens": 3,
            "decode_ms_per_token": pytest.approx(1.5),
            "service_name": "two-instrumentations",
        }
    ]
