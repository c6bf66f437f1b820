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

import logging
import threading
from collections.abc import Sequence

from opentelemetry.context import attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tokentrace.config import max_attribute_chars, redact
from tokentrace.exporter.spans import ResourceCache, span_row
from tokentrace.store.rows import BuiltRow, RowError
from tokentrace.store.writer import SpanWriter, WriteResult

# The context key the contrib instrumentations honour (psycopg's among them).
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

_log = logging.getLogger(__name__)

__all__ = ["PostgresSpanExporter"]


class PostgresSpanExporter(SpanExporter):
    """Exports SDK spans to PostgreSQL through :class:`~tokentrace.store.writer.SpanWriter`."""

    def __init__(self, dsn: str | None = None, *, writer: SpanWriter | None = None) -> None:
        self._dsn = dsn
        self._writer = writer
        self._max_chars = max_attribute_chars()
        self._lock = threading.Lock()
        self._shutdown = False
        self._failing_since: str | None = None
        self._failed_before_outage = 0
        self.stats = {"exported": 0, "duplicates": 0, "rejected": 0, "failed_batches": 0}

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
                return self._export(spans)
        except Exception as exc:  # noqa: BLE001 - the SDK must never see an exception
            self._note_failure(exc)
            return SpanExportResult.FAILURE
        finally:
            detach(token)

    def _export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = self._build(spans)
        result = self._get_writer().write(rows)
        self._note_success(result, rows)
        return SpanExportResult.SUCCESS

    def _build(self, spans: Sequence[ReadableSpan]) -> list[BuiltRow]:
        rows: list[BuiltRow] = []
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
            rows.append(row)
        return rows

    def _note_success(self, result: WriteResult, rows: Sequence[BuiltRow]) -> None:
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
            _log.warning("span %r refused by PostgreSQL: %s", rows[index].values[3], reason)

    def _note_failure(self, exc: Exception) -> None:
        reason = redact(f"{type(exc).__name__}: {exc}".strip())
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
        self._shutdown = True
        if self._writer is not None:
            self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
