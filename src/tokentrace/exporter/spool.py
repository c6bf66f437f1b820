"""A bounded on-disk spool for batches the database could not take.

When PostgreSQL is unreachable, :class:`~tokentrace.exporter.PostgresSpanExporter`
writes the batch here and replays the spool, oldest batch first, as soon as the
database answers again — on the next export, on ``force_flush``/``shutdown``, and
from a background retry loop while anything is pending. Each batch is one file,
written to a temporary name, flushed to disk and renamed, so a crash of the
application loses nothing already spooled: the next process that exports with the
same spool directory replays it. Replay is idempotent (the writer stores each span
once), so a batch replayed twice — say, a crash between commit and file removal —
is harmless.

The spool is capped (``TOKENTRACE_SPOOL_MAX_MB``, default 256; 0 turns spooling
off). When a new batch would not fit, the oldest batches are dropped; when the disk
itself is full the new batch is dropped. Every drop is counted in
:attr:`Spool.dropped_spans` and logged.

Directory: ``TOKENTRACE_SPOOL_DIR``, default ``<user data dir>/tokentrace/spool``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokentrace.config import env_int, env_str
from tokentrace.store.rows import SpanData

_log = logging.getLogger(__name__)
_SUFFIX = ".batch.json"
DEFAULT_MAX_MB = 256


def default_spool_dir() -> Path:
    explicit = env_str("TOKENTRACE_SPOOL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return platformdirs.user_data_path("tokentrace") / "spool"


def spool_max_bytes() -> int:
    return env_int("TOKENTRACE_SPOOL_MAX_MB", DEFAULT_MAX_MB, minimum=0) * 1024 * 1024


def _b(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def _unb(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def encode_batch(batch: Sequence[SpanData]) -> bytes:
    """A batch as JSON (pure); non-finite floats survive as JSON's NaN/Infinity."""
    spans = [
        {
            "trace_id": _b(s.trace_id), "span_id": _b(s.span_id), "parent": _b(s.parent_span_id),
            "name": s.name, "kind": s.kind, "start_ns": s.start_ns, "end_ns": s.end_ns,
            "attributes": dict(s.attributes), "resource": dict(s.resource),
            "status": s.status, "status_message": s.status_message,
        }
        for s in batch
    ]  # fmt: skip
    return json.dumps({"version": 1, "spans": spans}, default=_fallback).encode("utf-8", "surrogatepass")


def _fallback(value: Any) -> Any:
    if isinstance(value, (tuple, frozenset, set)):
        return list(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def decode_batch(data: bytes) -> list[SpanData]:
    """The inverse of :func:`encode_batch` (pure)."""
    payload = json.loads(data.decode("utf-8", "surrogatepass"))
    return [
        SpanData(
            trace_id=_unb(s["trace_id"]) or b"", span_id=_unb(s["span_id"]) or b"",
            parent_span_id=_unb(s["parent"]), name=s["name"], kind=s["kind"],
            start_ns=s["start_ns"], end_ns=s["end_ns"], attributes=s["attributes"],
            resource=s["resource"], status=s["status"], status_message=s["status_message"],
        )
        for s in payload["spans"]
    ]  # fmt: skip


class Spool:
    """Batches on disk, oldest first, within a size cap."""

    def __init__(self, directory: Path | None = None, max_bytes: int | None = None) -> None:
        self.directory = directory or default_spool_dir()
        self.max_bytes = spool_max_bytes() if max_bytes is None else max_bytes
        self.dropped_spans = 0
        self.spooled_spans = 0
        self._lock = threading.Lock()
        self._seq = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.endswith(_SUFFIX))
        except OSError:
            return []

    def pending(self) -> int:
        """Number of batches waiting."""
        return len(self._files())

    def append(self, batch: Sequence[SpanData]) -> bool:
        """Spool ``batch``; False (and counted as dropped) when it cannot be kept."""
        data = encode_batch(batch)
        with self._lock:
            if len(data) > self.max_bytes:
                self._drop(len(batch), f"batch of {len(data)} bytes exceeds the spool cap")
                return False
            try:
                self._make_room(len(data))
                self._write(data)
            except OSError as exc:
                self._drop(len(batch), f"cannot write to spool {self.directory}: {exc}")
                return False
        self.spooled_spans += len(batch)
        return True

    def _write(self, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        # Time first so files from several processes sort oldest first.
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}{_SUFFIX}"
        tmp = self.directory / f".{name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.directory / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _make_room(self, needed: int) -> None:
        files = self._files()
        sizes = {p: _size(p) for p in files}
        total = sum(sizes.values())
        for path in files:
            if total + needed <= self.max_bytes:
                return
            lost = _count_spans(path)
            path.unlink(missing_ok=True)
            total -= sizes[path]
            self._drop(lost, f"spool over {self.max_bytes // (1024 * 1024)} MiB: oldest batch {path.name} dropped")

    def _drop(self, spans: int, why: str) -> None:
        self.dropped_spans += spans
        _log.error("%d span(s) dropped (%d in total): %s", spans, self.dropped_spans, why)

    @contextmanager
    def replaying(self) -> Iterator[list[Path]]:
        """The pending files, oldest first, under an exclusive lock (one replayer at a time)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".replay.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._files()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def read(path: Path) -> list[SpanData] | None:
        """A spooled batch, or None if another process replayed it first or it is unreadable."""
        try:
            return decode_batch(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            _log.error("spooled batch %s is unreadable and is set aside: %s", path.name, exc)
            path.rename(path.with_name(path.name + ".bad"))
            return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _count_spans(path: Path) -> int:
    batch = Spool.read(path)
    return 0 if batch is None else len(batch)
