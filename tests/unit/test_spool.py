from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from tokentrace.exporter.spool import Spool, decode_batch, encode_batch
from tokentrace.store.rows import SpanData


def _span(i: int, **attrs: object) -> SpanData:
    return SpanData(
        trace_id=bytes([i % 255 + 1]) * 16, span_id=bytes([i % 255 + 1]) * 8, parent_span_id=None,
        name=f"s{i}", kind="CLIENT", start_ns=1_700_000_000_000_000_000 + i,
        end_ns=1_700_000_001_000_000_000 + i, attributes={"gen_ai.request.model": "m", **attrs},
        resource={"service.name": "svc"}, status="OK", status_message=None,
    )


def test_round_trip_keeps_every_field() -> None:
    original = [_span(1, tokens=3, ratio=0.5, flag=True, seq=("a", "b"), bad=math.inf, text="nul\x00")]
    (back,) = decode_batch(encode_batch(original))
    assert back.trace_id == original[0].trace_id and back.span_id == original[0].span_id
    assert back.attributes["seq"] == ["a", "b"]
    assert back.attributes["bad"] == math.inf
    assert back.attributes["text"] == "nul\x00"
    assert (back.start_ns, back.end_ns, back.status) == (original[0].start_ns, original[0].end_ns, "OK")


def test_batches_come_back_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for i in range(3):
        assert spool.append([_span(i)])
    with spool.replaying() as files:
        names = [Spool.read(p)[0].name for p in files]  # type: ignore[index]
    assert names == ["s0", "s1", "s2"]


def test_full_spool_drops_oldest_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = len(encode_batch([_span(0)] * 10))
    spool = Spool(tmp_path, max_bytes=int(one * 2.5))
    for i in range(4):
        assert spool.append([_span(i * 10 + j) for j in range(10)])
    assert spool.pending() == 2
    assert spool.dropped_spans == 20
    assert "10 span(s) dropped (20 in total)" in caplog.text


def test_unwritable_spool_drops_the_batch_and_keeps_going(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = Spool(blocker / "spool", max_bytes=10_000_000)
    assert spool.append([_span(1), _span(2)]) is False
    assert spool.dropped_spans == 2


def test_disabled_with_zero_cap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENTRACE_SPOOL_MAX_MB", "0")
    monkeypatch.setenv("TOKENTRACE_SPOOL_DIR", str(tmp_path))
    spool = Spool()
    assert not spool.enabled
    assert spool.directory == tmp_path


def test_unreadable_batch_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.append([_span(1)])
    with spool.replaying() as files:
        files[0].write_bytes(b"{not json")
        assert Spool.read(files[0]) is None
    assert spool.pending() == 0
    assert "unreadable" in caplog.text
