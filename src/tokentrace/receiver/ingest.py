"""From decoded spans to committed rows: the receiver's one path into the store.

Both protocols call :meth:`Ingestor.store` with a request body and the
:mod:`.decode` function for its encoding. It decodes the body, builds
each row as :func:`~tokentrace.store.rows.build_row` does — the same normalize and
derive steps the in-process exporter uses — and hands the rows to a
:class:`~.group_commit.GroupCommitter`, which stores them together with those of
other requests in progress through the shared
:class:`~tokentrace.store.writer.SpanWriter`: one COPY and one transaction per
group, spans already stored skipped (so a client's retry of the same request
stores nothing twice). :meth:`~Ingestor.store` returns only after the commit.

Spans refused on the way — by the decoder, by ``build_row`` (:class:`RowError`) or
by PostgreSQL — are counted with their reasons in :class:`ExportOutcome`; the rest
of the request is stored. A database that cannot be reached raises
:class:`Unavailable` (retryable for the client) in every request of the group.
:meth:`~Ingestor.admitted` bounds the number of requests in progress and raises
:class:`Overloaded` beyond it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from opentelemetry.instrumentation.utils import suppress_instrumentation

from tokentrace.receiver.decode import Decoded, Rejection
from tokentrace.receiver.group_commit import (
    DEFAULT_MAX_GROUP_ROWS,
    CommitterClosed,
    GroupCommitter,
)
from tokentrace.store.rows import (
    CleanMapping,
    RowError,
    SpanData,
    WireRow,
    build_wire_row,
    clean_mapping,
)
from tokentrace.store.writer import SpanWriter, WriteResult

_log = logging.getLogger(__name__)
_SHOWN_REASONS = 5
_LOG_INTERVAL_S = 10.0
# Errors that mean "the database is not there right now", not "this data is bad".
_UNAVAILABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,  # a replica or a fail-over in progress
)


class Unavailable(Exception):
    """The database cannot be reached; the client should retry later.

    The message is the database driver's, for the server log; clients get a generic one.
    """


class Overloaded(Exception):
    """Too many requests in progress; the client should retry later."""


class StorageError(Exception):
    """The database refused the batch for a reason that is not the client's data."""


@dataclass(slots=True)
class ExportOutcome:
    """What became of one export request."""

    received: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    def error_message(self) -> str:
        """Why spans were refused (for ``partial_success.error_message``); empty if none were."""
        if not self.rejected:
            return ""
        reasons = "; ".join(r.describe() for r in self.rejected[:_SHOWN_REASONS])
        more = len(self.rejected) - _SHOWN_REASONS
        tail = f"; and {more} more" if more > 0 else ""
        return f"{len(self.rejected)} of {self.received} spans rejected: {reasons}{tail}"


def _ids(span: SpanData) -> tuple[str, str]:
    return span.trace_id.hex(), span.span_id.hex()


def build_rows(
    spans: list[SpanData], max_value_chars: int
) -> tuple[list[WireRow], list[SpanData], list[Rejection]]:
    """Wire rows for ``spans``, the spans they came from, and the spans ``build_row`` refused.

    Each row is ``wire_row(build_row(span))``, made in one step (:func:`build_wire_row`):
    rows wait for their group's commit as flat tuples the garbage collector skips.
    """
    rows: list[WireRow] = []
    sources: list[SpanData] = []
    refused: list[Rejection] = []
    # The decoder gives the spans of one resource the same dict: clean it and encode
    # its JSON once, instead of once per span.
    resources: dict[int, CleanMapping] = {}
    for span in spans:
        resource = resources.get(id(span.resource))
        if resource is None:
            resource = resources[id(span.resource)] = clean_mapping(span.resource, max_value_chars)
        try:
            row, problems = build_wire_row(span, max_value_chars, resource)
        except RowError as exc:
            refused.append(Rejection(*_ids(span), str(exc)))
            continue
        if problems:
            _log.debug("span %s/%s stored altered: %s", *_ids(span), "; ".join(problems))
        rows.append(row)
        sources.append(span)
    return rows, sources, refused


class Ingestor:
    """Stores decoded export requests; shared by the gRPC and HTTP servers (thread-safe)."""

    def __init__(
        self,
        writer: SpanWriter,
        *,
        max_value_chars: int,
        max_inflight: int,
        writer_threads: int = 1,
        max_group_rows: int = DEFAULT_MAX_GROUP_ROWS,
    ) -> None:
        self._writer = writer
        self._max_value_chars = max_value_chars
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._counts_lock = threading.Lock()
        self.spans_stored = 0
        self.spans_rejected = 0
        self._last_logged: dict[str, float] = {}
        # One request decodes and builds rows at a time. Under the GIL several would
        # not run faster, but each busy thread makes the committer's thread wait
        # longer for the GIL between COPY chunks, and a slow write holds up every
        # request behind it (measured: bench/RESULTS.md, "OTLP receiver").
        self._cpu_turn = threading.Lock()
        self.committer = GroupCommitter(
            self._write_group, threads=writer_threads, max_rows=max_group_rows
        )

    def close(self, timeout: float | None = None) -> None:
        """Stop the writer threads once what is queued is stored (after the servers drained)."""
        self.committer.close(timeout)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the in-progress slots, or raise :class:`Overloaded` if none is free."""
        if not self._slots.acquire(blocking=False):
            raise Overloaded("too many export requests in progress")
        try:
            yield
        finally:
            self._slots.release()

    def store(self, body: bytes, decode: Callable[[bytes], Decoded]) -> ExportOutcome:
        """Decode ``body``, build and commit its rows; returns after the commit.

        Raises what ``decode`` raises for a body that is not an export request.
        """
        with self._cpu_turn:
            decoded = decode(body)
            rows, sources, refused = build_rows(decoded.spans, self._max_value_chars)
        outcome = ExportOutcome(received=decoded.total, rejected=list(decoded.rejected))
        outcome.rejected.extend(refused)
        if rows:
            for index, reason in self._commit(rows):
                outcome.rejected.append(
                    Rejection(*_ids(sources[index]), f"refused by PostgreSQL: {reason}")
                )
        with self._counts_lock:
            self.spans_rejected += outcome.rejected_count
        if outcome.rejected and self._may_log("rejected"):
            _log.info("export request: %s", outcome.error_message())
        return outcome

    def _commit(self, rows: list[WireRow]) -> list[tuple[int, str]]:
        """Rows PostgreSQL refused (index, reason), once committed with the group's others."""
        try:
            share = self.committer.write(rows)
        except CommitterClosed as exc:
            raise Unavailable(str(exc)) from None
        error = share.error
        if error is None:
            return share.rejected
        # A fresh exception per request: the group's one is shared by several threads.
        if isinstance(error, Unavailable):
            raise Unavailable(str(error)) from None
        if isinstance(error, StorageError):
            raise StorageError(str(error)) from None
        raise StorageError(f"internal error ({type(error).__name__}; see the server log)") from None

    def _may_log(self, topic: str) -> bool:
        # Every client retries while the database is down, and a misbehaving one sends
        # the same bad spans again and again: one line per topic per interval is enough.
        now = time.monotonic()
        with self._counts_lock:
            if now - self._last_logged.get(topic, -_LOG_INTERVAL_S) < _LOG_INTERVAL_S:
                return False
            self._last_logged[topic] = now
        return True

    def _write_group(self, rows: list[WireRow]) -> WriteResult:
        """One group's write, in a committer thread (so errors are logged once per group)."""
        try:
            # If the process runs under zero-code instrumentation (psycopg, say), writing
            # spans must not itself make spans: that would feed back into this receiver.
            with suppress_instrumentation():
                result = self._writer.write_wire(rows)
        except _UNAVAILABLE as exc:
            if self._may_log("unavailable"):
                _log.warning("database unavailable, clients told to retry: %s", _first_line(exc))
            raise Unavailable(_first_line(exc)) from exc
        except psycopg.Error as exc:
            _log.exception("the database refused a batch of %d spans", len(rows))
            raise StorageError(_first_line(exc)) from exc
        except Exception:
            _log.exception("writing a batch of %d spans failed", len(rows))
            raise
        with self._counts_lock:
            self.spans_stored += result.inserted
        return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
