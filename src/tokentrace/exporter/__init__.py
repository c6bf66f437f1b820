"""``PostgresSpanExporter``: OpenTelemetry spans into ``tokentrace.spans``.

Use it like any SDK exporter, or with no code at all::

    OTEL_TRACES_EXPORTER=tokentrace opentelemetry-instrument python app.py

It can be built with no arguments (the database comes from ``TOKENTRACE_DSN``, the
libpq ``PG*`` variables, or the embedded server) and connects lazily, on the first
export. Each batch is one COPY and one transaction; a batch exported twice stores
each span once. It never raises into the SDK: when the database cannot be reached
``export`` returns ``FAILURE`` and logs the reason once (never the password) until
the database answers again. Spans that cannot be stored are logged and skipped; the
rest of the batch is stored. The exporter's own database traffic runs with
instrumentation suppressed, so it never traces itself.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence

from opentelemetry.context import attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tokentrace.config import env_str, max_attribute_chars
from tokentrace.exporter.spans import ResourceCache, in_key_order, span_data, span_days, span_row
from tokentrace.exporter.spool import Spool, default_spool_dir
from tokentrace.store.errors import describe, is_unavailable
from tokentrace.store.rows import RowError, SpanData, WireRow, build_row, wire_row
from tokentrace.store.writer import SpanWriter, WriteResult, row_name

# The context key the contrib instrumentations honour (psycopg's among them).
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

_log = logging.getLogger(__name__)

__all__ = ["PostgresSpanExporter"]


class PostgresSpanExporter(SpanExporter):
    """Exports SDK spans to PostgreSQL through :class:`~tokentrace.store.writer.SpanWriter`."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        writer: SpanWriter | None = None,
        spool: Spool | None = None,
        retry_interval_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._writer = writer
        self.spool = spool if spool is not None else Spool(default_spool_dir() / _spool_key(dsn))
        self._retry_interval_s = retry_interval_s
        self._retry: threading.Thread | None = None
        self._stop = threading.Event()
        self._max_chars = max_attribute_chars()
        self._lock = threading.Lock()
        self._shutdown = False
        self._failing_since: str | None = None
        self._failed_before_outage = 0
        self.stats = {"exported": 0, "duplicates": 0, "rejected": 0, "failed_batches": 0}
        if self.spool.enabled and self.spool.pending():
            # Batches left by an earlier process (it crashed or the database was away).
            self._start_retry()

    def _get_writer(self) -> SpanWriter:
        if self._writer is None:
            from tokentrace.store.connection import resolve_dsn

            self._writer = SpanWriter(resolve_dsn(self._dsn))
        return self._writer

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            with self._lock:
                try:
                    return self._export(spans)
                except Exception as exc:  # noqa: BLE001 - the SDK must never see an exception
                    self._note_failure(exc)
                    if is_unavailable(exc):
                        self._spool_batch(spans)
                    return SpanExportResult.FAILURE
        finally:
            detach(token)

    def _export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # Older spooled batches go first, so the database sees batches in order.
        self._replay()
        ordered = in_key_order(spans)
        result, rows = self._get_writer().write_ordered(self._rows(ordered), span_days(ordered))
        self._note_success(result, rows)
        return SpanExportResult.SUCCESS

    # --- the spool ---------------------------------------------------------------
    def _spool_batch(self, spans: Sequence[ReadableSpan]) -> None:
        if not self.spool.enabled or not spans:
            return
        try:
            batch = [span_data(span) for span in spans]
        except Exception:  # noqa: BLE001 - a span we cannot even read is not spooled
            _log.exception("could not spool %d span(s)", len(spans))
            return
        if self.spool.append(batch):
            _log.warning(
                "PostgreSQL unreachable: %d span(s) spooled to %s (%d batch(es) waiting)",
                len(batch), self.spool.directory, self.spool.pending(),
            )
        self._start_retry()

    def _replay(self) -> None:
        if not self.spool.enabled or not self.spool.pending():
            return
        replayed = 0
        with self.spool.replaying() as files:
            for path in files:
                batch = Spool.read(path)
                if batch:
                    rows = self._build_data(batch)
                    self._note_success(self._get_writer().write_wire(rows), rows)
                    replayed += len(batch)
                path.unlink(missing_ok=True)  # only after the commit: a crash replays it again
        if replayed:
            _log.warning("replayed %d spooled span(s) into PostgreSQL", replayed)

    def _start_retry(self) -> None:
        if self._retry is not None and self._retry.is_alive():
            return
        self._retry = threading.Thread(target=self._retry_loop, name="tokentrace-spool-replay", daemon=True)
        self._retry.start()

    def _retry_loop(self) -> None:
        # Replays without waiting for new spans: an idle application's spool empties too.
        while not self._stop.wait(self._retry_interval_s):
            token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
            try:
                with self._lock:
                    self._replay()
                    if not self.spool.pending():
                        return
            except Exception as exc:  # noqa: BLE001 - keep retrying; the reason is logged once
                self._note_failure(exc)
            finally:
                detach(token)

    def _build_data(self, batch: Sequence[SpanData]) -> list[WireRow]:
        rows: list[WireRow] = []
        for data in batch:
            try:
                rows.append(wire_row(build_row(data, self._max_chars)))
            except RowError as exc:
                self.stats["rejected"] += 1
                _log.warning("spooled span %r not stored: %s", data.name, exc)
        return rows

    def _rows(self, spans: Sequence[ReadableSpan]) -> Iterator[WireRow]:
        # Wire rows, made one at a time as the writer sends them (see write_ordered),
        # and not BuiltRows: see tokentrace.store.rows.wire_row for why.
        resources = ResourceCache(self._max_chars)
        for span in spans:
            try:
                row = span_row(span, self._max_chars, resources)
            except RowError as exc:
                self.stats["rejected"] += 1
                _log.warning("span %r not stored: %s", span.name, exc)
                continue
            if row.problems:
                _log.warning("span %r stored with changes: %s", span.name, "; ".join(row.problems))
            yield wire_row(row, resources.get(span.resource).jsonb)

    def _note_success(self, result: WriteResult, rows: Sequence[WireRow]) -> None:
        if self._failing_since is not None:
            _log.warning(
                "PostgreSQL reachable again; exporting resumed after %d failed batch(es)",
                self.stats["failed_batches"] - self._failed_before_outage,
            )
            self._failing_since = None
        self.stats["exported"] += result.inserted
        self.stats["duplicates"] += result.duplicates
        self.stats["rejected"] += len(result.rejected)
        for index, reason in result.rejected:
            _log.warning("span %r refused by PostgreSQL: %s", row_name(rows[index]), reason)

    def _note_failure(self, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {describe(exc)}"
        if self._failing_since is None:
            # Logged once when exporting starts failing, not once per batch.
            _log.error("exporting spans to PostgreSQL failed: %s", reason)
            self._failing_since = reason
            self._failed_before_outage = self.stats["failed_batches"]
        else:
            _log.debug("exporting spans to PostgreSQL still failing: %s", reason)
        self.stats["failed_batches"] += 1

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._stop.set()
        with self._lock:
            try:
                self._replay()  # a last chance for the spool; what stays is replayed next start
            except Exception as exc:  # noqa: BLE001
                _log.warning("%d spooled batch(es) left for the next start: %s",
                             self.spool.pending(), describe(exc))
            self._shutdown = True
        if self._writer is not None:
            self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            try:
                self._replay()
            except Exception:  # noqa: BLE001 - flushing must not raise either
                return False
        return True


def _spool_key(dsn: str | None) -> str:
    # One spool per database, so batches are only ever replayed where they belong.
    target = dsn or env_str("TOKENTRACE_DSN") or "default"
    return hashlib.sha256(target.encode()).hexdigest()[:16]

