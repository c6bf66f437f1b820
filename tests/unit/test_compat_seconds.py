"""compat.Seconds: what start_timer() and measure_latency() answer, used as the
original system's callers use a number, and awaited."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tokentrace.compat import Seconds

ROOT = Path(__file__).resolve().parents[2]


def test_it_is_the_number() -> None:
    s = Seconds(1.25)
    assert isinstance(s, float) and s == 1.25 and hash(s) == hash(1.25)
    old_style = "%.1f" % s  # noqa: UP031 - as code of the original's time may format it
    assert (repr(s), str(s), f"{s:.3f}", f"{s}", old_style) == ("1.25", "1.25", "1.250", "1.25", "1.2")
    assert json.dumps({"latency": s}) == '{"latency": 1.25}'
    assert json.loads(json.dumps(s)) == 1.25
    assert s > 1 and s < 2 and s >= 1.25 and max(s, 0.5) == 1.25 and min(2.0, s) == s
    assert math.isfinite(s) and round(s, 1) == 1.2 and int(s) == 1


def test_arithmetic_gives_plain_floats() -> None:
    s = Seconds(1.5)
    for value in (s * 1000, s - 0.5, 2 - s, s / 3, s + s, -s, abs(s), s**2, sum([s, s])):
        assert type(value) is float
    assert s * 1000 == 1500.0


def test_it_pickles_and_copies_as_a_plain_float() -> None:
    s = Seconds(0.125)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(s, protocol)
        assert b"tokentrace" not in data and b"Seconds" not in data  # loads without tokentrace
        loaded = pickle.loads(data)
        assert type(loaded) is float and loaded == 0.125
    assert type(copy.copy(s)) is float and type(copy.deepcopy(s)) is float


def test_awaiting_it_gives_the_number_as_a_plain_float() -> None:
    async def main() -> list[object]:
        s = Seconds(2.5)
        return [
            await s,
            await s,  # as often as wanted
            await asyncio.wait_for(Seconds(1.0), 1),
            await asyncio.gather(Seconds(3.0), Seconds(4.0)),
            await asyncio.ensure_future(Seconds(5.0)),
        ]

    first, again, waited, gathered, future = asyncio.run(main())
    assert type(first) is float and (first, again, waited, future) == (2.5, 2.5, 1.0, 5.0)
    assert gathered == [3.0, 4.0]
    assert not asyncio.iscoroutine(Seconds(1.0))  # nothing to leave un-awaited


@pytest.mark.parametrize("form", ["plain", "awaited"])
def test_mypy_types_both_forms_as_float(tmp_path: Path, form: str) -> None:
    call = (
        "latency = telemetry.measure_latency(telemetry.start_timer())"
        if form == "plain"
        else "latency = await telemetry.measure_latency(await telemetry.start_timer())"
    )
    code = (
        "from __future__ import annotations\n"
        "import json\n"
        "from tokentrace.compat import Telemetry\n"
        "async def caller(telemetry: Telemetry) -> str:\n"
        f"    {call}\n"
        "    await telemetry.log_load_latency('m', latency)\n"
        "    ms: float = latency * 1000\n"
        "    return json.dumps({'ms': ms, 'slow': latency > 2.0})\n"
    )
    (tmp_path / "caller.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", "/dev/null",
         str(tmp_path / "caller.py")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
