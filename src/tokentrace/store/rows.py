"""Turn one span, from whichever door it came in, into one ``tokentrace.spans`` row.

Pure code, no I/O. Both entrances produce a :class:`SpanData` (the exporter from an
SDK ``ReadableSpan``, the receiver from an OTLP message) and :func:`build_row` does
the rest the same way for both: normalize the attribute dialect, derive the
efficiency figures, and make every value storable.

Storable means PostgreSQL will take it: NUL characters (which ``text`` and ``jsonb``
refuse) become U+FFFD, unpaired surrogates are replaced, strings longer than
``max_value_chars`` are cut with a marker, non-finite floats become strings. Each
change is named in :attr:`BuiltRow.problems` (so the caller can log it) and listed
under the ``tokentrace.sanitized`` attribute of the stored row.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from tokentrace import attributes as A
from tokentrace.dialects import infer_operation, normalize
from tokentrace.efficiency import Efficiency, derive

COLUMNS: tuple[str, ...] = (
    "trace_id", "span_id", "parent_span_id", "name", "kind", "service_name",
    "operation", "provider", "model", "start_time", "end_time", "duration_ms",
    "input_tokens", "output_tokens", "inference_ms", "ms_per_token",
    "prefill_ms_per_token", "decode_ms_per_token", "ttft_ms", "load_ms",
    "token_source", "status", "error_type", "attributes", "resource",
)  # fmt: skip
# Binary COPY applies no casts, so every column's type is stated.
COLUMN_TYPES: tuple[str, ...] = (
    "bytea", "bytea", "bytea", "text", "text", "text",
    "text", "text", "text", "timestamptz", "timestamptz", "float8",
    "int8", "int8", "float8", "float8",
    "float8", "float8", "float8", "float8",
    "text", "text", "text", "jsonb", "jsonb",
)  # fmt: skip

DEFAULT_MAX_VALUE_CHARS = 65_536
_MAX_NAME_CHARS = 1_024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MAX_NS = (dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc) - _EPOCH) // dt.timedelta(
    microseconds=1
) * 1000
_MAX_DEPTH = 32
_timedelta = dt.timedelta
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


# A row as binary COPY sends it: ``BuiltRow.values`` with both jsonb columns encoded.
WireRow = tuple[Any, ...]
_ATTRIBUTES = COLUMNS.index("attributes")
_START = COLUMNS.index("start_time")
assert _ATTRIBUTES == len(COLUMNS) - 2 and COLUMNS[-1] == "resource"


class RowError(ValueError):
    """A span that cannot be stored at all (its identity is unusable)."""


@dataclass(slots=True)
class SpanData:
    """A span as both entrances see it, before normalization."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any] = field(default_factory=dict)
    status: str = "UNSET"
    status_message: str | None = None


@dataclass(slots=True)
class BuiltRow:
    values: tuple[Any, ...]
    problems: list[str]
    start_time: dt.datetime


class _Sanitizer:
    """Makes values storable, remembering what it changed and where.

    Most values need no change: plain ASCII strings without NUL that fit, ints,
    bools, finite floats, None. Those are recognised with a few cheap checks and
    kept as they are; everything else takes the full path below.
    """

    __slots__ = ("changed", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.changed: list[str] = []

    def text(self, where: str, value: str, limit: int | None = None) -> str:
        limit = self.limit if limit is None else limit
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
            self.changed.append(f"{where}: NUL replaced")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                value = value.encode("utf-8", "replace").decode("utf-8")
                self.changed.append(f"{where}: invalid unicode replaced")
        if len(value) > limit:
            cut = len(value) - limit
            value = f"{value[:limit]}…[truncated {cut} chars]"
            self.changed.append(f"{where}: truncated {cut} chars")
        return value

    def column(self, value: str | None) -> str | None:
        """A short text column (name, model, …)."""
        if value is None or _plain_text(value, _MAX_NAME_CHARS):
            return value
        return self.text("column", value, _MAX_NAME_CHARS)

    def columns(self, name: str, *cleaned: str | None) -> tuple[str | None, ...]:
        """:meth:`column` of ``name`` and of each value after it (a row's short text columns).

        The values after ``name`` come from mappings this sanitizer made storable
        already (the span's attributes, its resource), so of those only the length
        can need a change.
        """
        if _plain_text(name, _MAX_NAME_CHARS):
            for value in cleaned:
                if value is not None and len(value) > _MAX_NAME_CHARS:
                    break
            else:
                return (name, *cleaned)
        return (self.column(name), *(self.column(value) for value in cleaned))

    def value(self, where: str, value: Any, depth: int = 0) -> Any:
        kind = type(value)
        if kind is str:
            return value if _plain_text(value, self.limit) else self.text(where, value)
        if kind is int or kind is bool or value is None or (kind is float and _isfinite(value)):
            return value
        return self._other(where, value, depth)

    def _other(self, where: str, value: Any, depth: int) -> Any:
        kind = type(value)
        if (kind is tuple or kind is list) and depth < _MAX_DEPTH:
            # The common sequence types, without the slower ABC checks below.
            return [self.value(where, v, depth + 1) for v in value]
        if isinstance(value, str):
            return self.text(where, value)
        if isinstance(value, (bool, int)) or value is None:
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            self.changed.append(f"{where}: non-finite number kept as text")
            return str(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).hex()
        if depth >= _MAX_DEPTH:
            self.changed.append(f"{where}: nesting deeper than {_MAX_DEPTH} cut")
            return None
        if isinstance(value, Mapping):
            return {
                self.text(where, str(k), _MAX_NAME_CHARS): self.value(where, v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, Sequence):
            return [self.value(where, v, depth + 1) for v in value]
        return self.text(where, str(value))

    def mapping(self, items: Mapping[str, Any]) -> dict[str, Any]:
        if type(items) is dict and _PLAIN_KEYS.issuperset(items):
            return self._known_keys(items)
        clean: dict[str, Any] = {}
        limit = self.limit
        for key, value in items.items():
            # Each key is cleaned before its value, so changes are listed in that order.
            if key in _PLAIN_KEYS:
                clean_key = key
            elif _plain_text(key, _MAX_NAME_CHARS):
                clean_key = key
                if len(_PLAIN_KEYS) < _PLAIN_KEYS_MAX:
                    _PLAIN_KEYS.add(key)
            else:
                clean_key = self.text("attribute key", str(key), _MAX_NAME_CHARS)
            kind = type(value)
            if kind is str:
                if not _plain_text(value, limit):
                    value = self.text(clean_key[:80], value)
            elif kind is tuple and _plain_items(value, limit):
                value = list(value)
            elif not (kind is int or kind is bool or value is None or (kind is float and _isfinite(value))):
                # Changes are labelled with the cleaned key: the labels are stored too.
                value = self._other(clean_key[:80], value, 0)
            clean[clean_key] = value
        return clean

    def _known_keys(self, items: dict[str, Any]) -> dict[str, Any]:
        """:meth:`mapping` of a dict whose keys are all in ``_PLAIN_KEYS`` (the usual span).

        Its keys need no check, so the dict is copied in C and only the values that
        need a change are replaced, in place: the same keys, order and values as
        :meth:`mapping` builds one key at a time.
        """
        clean = items.copy()
        limit = self.limit
        for key, value in items.items():
            kind = type(value)
            if kind is str:
                # _plain_text(value, limit), written out: a call per value costs this
                # loop a fifth more (bench/RESULTS.md, "The pure core, plainly written").
                if len(value) > limit or not value.isascii() or "\x00" in value:
                    clean[key] = self.text(key[:80], value)
            elif kind is tuple and _plain_items(value, limit):
                clean[key] = list(value)
            elif not (kind is int or kind is bool or value is None or (kind is float and _isfinite(value))):
                clean[key] = self._other(key[:80], value, 0)
        return clean


# Attribute keys already seen to need no cleaning: the same few dozen keys come back on
# every span, and a set lookup is cheaper than the checks. Bounded, so a stream of
# distinct (hostile) keys cannot grow it without limit.
_PLAIN_KEYS: set[str] = set()
_PLAIN_KEYS_MAX = 4096


def _plain_items(values: tuple[Any, ...], limit: int) -> bool:
    """Every item is an int, bool, finite float or plain text within ``limit``."""
    for value in values:
        kind = type(value)
        if kind is str:
            if len(value) > limit or not value.isascii() or "\x00" in value:  # _plain_text
                return False
        elif not (kind is int or kind is bool or (kind is float and _isfinite(value))):
            return False
    return True


def _plain_text(value: object, limit: int) -> bool:
    """A ``str`` PostgreSQL takes as it is: ASCII, no NUL, at most ``limit`` characters.

    What nearly all text is; any other text takes :meth:`_Sanitizer.text`.
    """
    return type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value


_isfinite = math.isfinite


@dataclass(frozen=True, slots=True)
class CleanMapping:
    """A mapping made storable once, to be shared by many rows (a span resource)."""

    values: dict[str, Any]
    changes: tuple[str, ...]
    jsonb: bytes = b""  # ``jsonb(values)``, encoded once for all the rows that share it


def clean_mapping(items: Mapping[str, Any], max_value_chars: int = DEFAULT_MAX_VALUE_CHARS) -> CleanMapping:
    """``items`` made storable exactly as :func:`build_row` would make a resource."""
    clean = _Sanitizer(max_value_chars)
    values = clean.mapping(items)
    return CleanMapping(values, tuple(clean.changed), jsonb(values))


def ns_to_datetime(ns: int) -> dt.datetime:
    """Nanoseconds since the epoch to an aware UTC datetime (microsecond precision)."""
    return _EPOCH + _timedelta(0, 0, ns // 1000)  # (days, seconds, µs): positional is faster


def _check_ids(data: SpanData) -> None:
    if len(data.trace_id) != 16 or data.trace_id == _ZERO_TRACE_ID:
        raise RowError(f"trace_id must be 16 bytes, not all zero (got {len(data.trace_id)} bytes)")
    if len(data.span_id) != 8 or data.span_id == _ZERO_SPAN_ID:
        raise RowError(f"span_id must be 8 bytes, not all zero (got {len(data.span_id)} bytes)")
    if data.parent_span_id is not None and len(data.parent_span_id) not in (0, 8):
        raise RowError(f"parent_span_id must be 8 bytes (got {len(data.parent_span_id)} bytes)")
    if not 0 <= data.start_ns <= _MAX_NS or not 0 <= data.end_ns <= _MAX_NS:
        raise RowError("timestamps must lie between 1970 and 9999")


def _error_type(data: SpanData, attrs: Mapping[str, Any]) -> str | None:
    declared = attrs.get(A.ERROR_TYPE)
    if isinstance(declared, str) and declared:
        return declared
    return "_OTHER" if data.status == "ERROR" else None


def build_row(
    data: SpanData,
    max_value_chars: int = DEFAULT_MAX_VALUE_CHARS,
    *,
    resource: CleanMapping | None = None,
    derived: Callable[[], Mapping[str, Any]] | None = None,
) -> BuiltRow:
    """One storable row for ``data``; raises :class:`RowError` if it has no usable identity.

    ``resource``, when given, stands for ``clean_mapping(data.resource,
    max_value_chars)`` computed beforehand: spans of one resource can share it (and
    its ``values`` dict) instead of each cleaning the same mapping again.

    ``derived``, for a span whose figures were derived onto it already (by
    :class:`~tokentrace.processor.TokenEfficiencySpanProcessor`): ``data.attributes``
    are the attributes it ended with, and ``derived()`` returns them with those
    figures. The row is the one ``derived()`` gives, what any exporter sees and the
    receiver would store. Those figures are the ones derived here, from the same
    functions, so the row is built from ``data.attributes`` (deriving once) unless
    the two could differ: when ``data.attributes`` hold a figure's name already,
    when the sanitizer changes one of them, or when a figure is not finite. Then
    ``derived()`` is read instead, before any figure is derived from the others.
    """
    if resource is None:
        _check_ids(data)  # refused before any work, as always
        resource = clean_mapping(data.resource, max_value_chars)
    head, attrs, problems = _row(data, max_value_chars, resource, derived)
    # ``+`` of two tuples is faster than unpacking one into a display.
    return BuiltRow(head + (attrs, resource.values), problems, head[_START])


def build_wire_row(
    data: SpanData, max_value_chars: int, resource: CleanMapping
) -> tuple[WireRow, list[str]]:
    """``wire_row(build_row(data, max_value_chars, resource=resource))`` and its problems.

    The same row, made in one step: the attributes dict is encoded as soon as it is
    built and then freed, instead of living (and being walked by the garbage
    collector) until the batch is written — the receiver's path, where rows wait
    for a group commit. Less CPU than the two steps, per span and end to end:
    see bench/RESULTS.md ("OTLP receiver").
    """
    head, attrs, problems = _row(data, max_value_chars, resource)
    return head + (jsonb(attrs), resource.jsonb or jsonb(resource.values)), problems


def _row(
    data: SpanData,
    max_value_chars: int,
    resource: CleanMapping,
    derived: Callable[[], Mapping[str, Any]] | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """Every column but the two jsonb ones, the attributes to store, and what changed.

    ``derived``: see :func:`build_row`.
    """
    _check_ids(data)
    source = data.attributes
    if derived is not None and not _DERIVED_KEYS.isdisjoint(source):
        source, derived = derived(), None
    clean = _Sanitizer(max_value_chars)
    attrs = clean.mapping(source)
    if derived is not None and clean.changed:
        clean = _Sanitizer(max_value_chars)
        attrs = clean.mapping(derived())
        derived = None
    facts = normalize(attrs)
    duration_ms: float | None = (data.end_ns - data.start_ns) / 1e6
    if duration_ms is not None and duration_ms < 0:
        clean.changed.append("span ends before it starts: duration unknown")
        duration_ms = None
    eff = derive(facts, attrs, duration_ms)
    if derived is not None and not _finite(eff):
        return _row(replace(data, attributes=derived()), max_value_chars, resource)
    eff.add_to(attrs)
    if clean.changed:
        attrs[A.TT_SANITIZED] = clean.changed[:20]
    clean.changed.extend(resource.changes)
    service = resource.values.get(A.SERVICE_NAME)
    # ns_to_datetime, inlined (twice a span): (days, seconds, µs) positional is fastest.
    start = _EPOCH + _timedelta(0, 0, data.start_ns // 1000)
    operation = facts.operation
    if operation is None:
        operation = infer_operation(facts, data.name)
    name, service, operation, provider, model, error_type = clean.columns(
        data.name,
        service if isinstance(service, str) else None,
        operation,
        facts.provider,
        facts.model,
        _error_type(data, attrs),
    )
    head = (
        data.trace_id,
        data.span_id,
        data.parent_span_id or None,
        name or "",
        data.kind,
        service,
        operation,
        provider,
        model,
        start,
        _EPOCH + _timedelta(0, 0, data.end_ns // 1000),
        duration_ms,
        facts.input_tokens,
        facts.output_tokens,
    )
    # Efficiency's fields are the next seven columns, in the same order (see _EFFICIENCY).
    return head + eff + (data.status, error_type), attrs, clean.changed


def _finite(eff: Efficiency) -> bool:
    """No figure of ``eff`` is infinite or NaN."""
    for value in (
        eff.inference_ms,
        eff.ms_per_token,
        eff.prefill_ms_per_token,
        eff.decode_ms_per_token,
        eff.ttft_ms,
        eff.load_ms,
    ):
        if value is not None and not _isfinite(value):
            return False
    return True


_DERIVED_KEYS = frozenset(A.DERIVED_KEYS)
_EFFICIENCY = slice(COLUMNS.index("inference_ms"), COLUMNS.index("token_source") + 1)
assert COLUMNS[_EFFICIENCY] == Efficiency._fields, "the columns follow Efficiency's fields"


# ``json.dumps`` with these options builds a new encoder on every call; one is enough.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps_bytes(value: Any) -> bytes:
    """UTF-8 JSON for a jsonb column (values are already sanitized).

    orjson is many times faster than the standard library here (bench/RESULTS.md),
    which matters at tens of thousands of spans a second; it refuses integers beyond 64 bits (a Python span
    attribute may hold one), and those few values take the standard library's path.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        return _JSON.encode(value).encode()


def dumps(value: Any) -> str:
    """JSON text for a jsonb column (values are already sanitized)."""
    return dumps_bytes(value).decode()


def jsonb(value: Any) -> bytes:
    """``value`` in jsonb's binary COPY format: version 1, then the JSON text.

    Byte for byte what psycopg's ``JsonbBinaryDumper`` sends for ``Jsonb(value)``,
    without a Python dumper call per value.
    """
    try:  # dumps_bytes, inlined: this runs once per span stored
        return b"\x01" + orjson.dumps(value)
    except TypeError:
        return b"\x01" + _JSON.encode(value).encode()


def wire_row(row: BuiltRow, resource_jsonb: bytes | None = None) -> WireRow:
    """``row`` ready for the writer; ``resource_jsonb`` is ``jsonb(resource)`` if known.

    Every value of a wire row is a str, bytes, number, datetime or None, so it is a
    tuple CPython's cyclic garbage collector stops tracking after one look: a batch
    of thousands of rows waiting for its COPY then costs the collector nothing,
    where the same rows holding their attribute dicts were walked on every full
    collection (see ``bench/bench_export.py``).
    """
    values = row.values
    resource = jsonb(values[-1]) if resource_jsonb is None else resource_jsonb
    return values[:_ATTRIBUTES] + (jsonb(values[_ATTRIBUTES]), resource)


def wire_rows(rows: Sequence[BuiltRow]) -> list[WireRow]:
    """:func:`wire_row` of each row; rows sharing a resource dict encode it once."""
    out: list[WireRow] = []
    shared: Any = None
    shared_jsonb = b""
    for row in rows:
        resource = row.values[-1]
        if resource is not shared:
            shared, shared_jsonb = resource, jsonb(resource)
        out.append(wire_row(row, shared_jsonb))
    return out
