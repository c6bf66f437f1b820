"""The exporter's spool under faults: a killed application, a full disk."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests import pgcontrol
from tests.helpers import query
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.exporter.spool import Spool
from tokentrace.store.embedded import embedded_dsn

SEC = 1_000_000_000

# Exports three batches while PostgreSQL is down (they are spooled), then dies by SIGKILL.
_APP = textwrap.dedent("""
    import os, signal, sys, time
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from tokentrace.exporter import PostgresSpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    now = time.time_ns()
    for i in range(300):
        s = provider.get_tracer("app").start_span(f"killed-{i}", start_time=now + i,
            attributes={"gen_ai.request.model": "spooled", "gen_ai.usage.output_tokens": 4})
        s.end(end_time=now + i + 1_000_000_000)
    spans = memory.get_finished_spans()
    exporter = PostgresSpanExporter(sys.argv[1])
    results = [exporter.export(spans[i:i + 100]).name for i in range(0, 300, 100)]
    print(results, exporter.spool.pending(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _spans(n: int, model: str) -> list:  # type: ignore[type-arg]
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * SEC)
    for i in range(n):
        s = provider.get_tracer("t").start_span(f"{model}-{i}", start_time=now + i,
                                                attributes={"gen_ai.request.model": model})
        s.end(end_time=now + i + SEC)
    return list(memory.get_finished_spans())


def test_application_killed_with_a_full_spool_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    dsn = embedded_dsn(data_dir)
    warmup = PostgresSpanExporter(dsn, spool=Spool(tmp_path / "unused", 0))
    assert warmup.export(_spans(1, "warmup")) == SpanExportResult.SUCCESS
    warmup.shutdown()
    env = dict(os.environ, TOKENTRACE_SPOOL_DIR=str(tmp_path / "spool"))
    pgcontrol.stop(data_dir)
    try:
        app = subprocess.run([sys.executable, "-c", _APP, dsn], env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        pgcontrol.start(data_dir)
    try:
        assert app.returncode == -signal.SIGKILL, app.stderr[-2000:]
        assert app.stdout.strip() == "['FAILURE', 'FAILURE', 'FAILURE'] 3"
        # The application starts again: its exporter finds the spool and replays it.
        os.environ["TOKENTRACE_SPOOL_DIR"], saved = str(tmp_path / "spool"), os.environ.get("TOKENTRACE_SPOOL_DIR")
        try:
            restarted = PostgresSpanExporter(dsn)
        finally:
            if saved is not None:
                os.environ["TOKENTRACE_SPOOL_DIR"] = saved
        assert restarted.spool.pending() == 3
        assert restarted.force_flush()
        assert restarted.spool.pending() == 0
        restarted.shutdown()
        assert query(dsn, "SELECT count(*), count(DISTINCT span_id) FROM tokentrace.spans"
                          " WHERE model = 'spooled'") == [(300, 300)]
        print("\nfault-test figures: spool after SIGKILL: 300 spans spooled, 300 stored, 0 duplicates")
    finally:
        pgcontrol.stop(data_dir)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: the spool's disk, nearly full from the start."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_spool_disk_full_keeps_the_application_running_and_counts_drops(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A spool cap far above the disk: the disk, not the cap, runs out.
    exporter = PostgresSpanExporter("postgresql://u@127.0.0.1:1/none?connect_timeout=1",
                                    spool=Spool(tiny_disk / "spool", 100 * 1024 * 1024))
    results = [exporter.export(_spans(100, f"full-{i}")) for i in range(20)]
    assert results == [SpanExportResult.FAILURE] * 20  # never an exception
    kept = exporter.spool.spooled_spans
    dropped = exporter.spool.dropped_spans
    assert kept > 0 and dropped > 0
    assert kept + dropped == 2000
    assert "span(s) dropped" in caplog.text and "No space left on device" in caplog.text
    exporter.shutdown()
    print(f"\nfault-test figures: spool disk full: 2000 spans offered, {kept} spooled, {dropped} dropped and counted")
