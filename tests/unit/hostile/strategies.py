"""Hypothesis strategies for hostile OTLP input, and the "storable" check.

The strategies lean towards what breaks things: NUL characters, lone surrogates,
numbers at the edges of their types, the attribute keys tokentrace reads (so
hostile values reach the dialect and efficiency code, not just the JSON blob),
nesting, ids of every length, timestamps across the whole uint64 range.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from tokentrace import attributes as A
from tokentrace.dialects import MAX_TOKENS
from tokentrace.store.rows import COLUMN_TYPES, COLUMNS, BuiltRow, dumps

# How many examples each fuzz test runs (they are counted in the report).
FUZZ_EXAMPLES = 400
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every key tokentrace reads or writes, plus the other dialects' names it normalizes.
KNOWN_KEYS: tuple[str, ...] = tuple(
    sorted({v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)})
)
TOKEN_STRINGS = ("12", "-1", "1e300", "NaN", "²", "١٢", " 7 ", "0x10", "", "99999999999999999999")
EDGE_INTS = (0, -1, 1, 2**31, 2**40, 2**40 + 1, 2**53 + 1, 2**63 - 1, -(2**63))
EDGE_NS = (0, 1, 1_700_000_000_000_000_000, 2**63 - 1, 2**63, 2**64 - 1)
SQL = "'); DROP TABLE tokentrace.spans; --"

# Text that protobuf can carry (valid Unicode, NUL included) ...
pb_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from("\x00'\";\\\u2028\ufffd\U0001f600a"), max_size=10),
    st.sampled_from(TOKEN_STRINGS + (SQL, "\x00", "a\x00b")),
)
# ... and text that only JSON can carry: lone surrogates as \ud800 escapes.
json_text = st.one_of(
    pb_text,
    st.text(st.characters(exclude_categories=()), max_size=10),
    st.sampled_from(("\ud800", "a\udfffb", "\ud83d")),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), pb_text)
json_keys = st.one_of(st.sampled_from(KNOWN_KEYS), json_text)
ints64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(EDGE_INTS))
doubles = st.one_of(st.floats(), st.sampled_from((1e300, -1.0, 12.0, 0.5, math.nan, math.inf)))
uint64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(EDGE_NS))


# --- protobuf -------------------------------------------------------------------------
def _pb_leaf() -> st.SearchStrategy[AnyValue]:
    return st.one_of(
        pb_text.map(lambda v: AnyValue(string_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        ints64.map(lambda v: AnyValue(int_value=v)),
        doubles.map(lambda v: AnyValue(double_value=v)),
        st.binary(max_size=12).map(lambda v: AnyValue(bytes_value=v)),
        st.just(AnyValue()),
    )


pb_values = st.recursive(
    _pb_leaf(),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda v: AnyValue(array_value=ArrayValue(values=v))),
        st.lists(st.tuples(keys, children), max_size=4).map(
            lambda kv: AnyValue(
                kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kv])
            )
        ),
    ),
    max_leaves=8,
)
pb_attributes = st.lists(
    st.builds(lambda k, v: KeyValue(key=k, value=v), keys, pb_values), max_size=6
)
ids16 = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))
ids8 = st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))


def pb_requests_for(
    timestamps: st.SearchStrategy[int],
) -> st.SearchStrategy[ExportTraceServiceRequest]:
    """Export requests whose spans start and end at ``timestamps`` (ns since the epoch)."""
    spans = st.builds(
        Span,
        trace_id=ids16,
        span_id=ids8,
        parent_span_id=st.one_of(st.just(b""), ids8),
        name=pb_text,
        kind=st.integers(0, 5),
        start_time_unix_nano=timestamps,
        end_time_unix_nano=timestamps,
        attributes=pb_attributes,
        status=st.builds(Status, code=st.integers(0, 2), message=pb_text),
    )
    return st.builds(
        lambda groups: ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=Resource(attributes=resource),
                    scope_spans=[ScopeSpans(spans=spans) for spans in scopes],
                )
                for resource, scopes in groups
            ]
        ),
        st.lists(
            st.tuples(pb_attributes, st.lists(st.lists(spans, max_size=3), max_size=2)),
            max_size=2,
        ),
    )


pb_requests = pb_requests_for(uint64)


# --- JSON -----------------------------------------------------------------------------
json_any = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), json_text),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(json_text, children, max_size=3)
    ),
    max_leaves=8,
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the well-typed value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, json_any)


def _json_int_text(values: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.one_of(values.map(str), values, st.sampled_from(TOKEN_STRINGS))


json_leaf = st.one_of(
    _maybe(json_text).map(lambda v: {"stringValue": v}),
    _maybe(st.booleans()).map(lambda v: {"boolValue": v}),
    _maybe(_json_int_text(ints64)).map(lambda v: {"intValue": v}),
    _maybe(st.one_of(doubles, st.sampled_from(("NaN", "Infinity", "1e300", "12")))).map(
        lambda v: {"doubleValue": v}
    ),
    _maybe(st.sampled_from(("AAEC", "-_8", "not base64!", ""))).map(lambda v: {"bytesValue": v}),
    st.just({}),
    json_any,
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda v: {"arrayValue": {"values": v}}),
        st.lists(st.fixed_dictionaries({"key": json_keys, "value": children}), max_size=4).map(
            lambda v: {"kvlistValue": {"values": v}}
        ),
    ),
    max_leaves=12,
)
json_attributes = _maybe(
    st.lists(st.fixed_dictionaries({"key": _maybe(json_keys), "value": json_values}), max_size=8)
)
hex_ids = st.one_of(
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.binary(min_size=8, max_size=8).map(lambda b: b.hex().upper()),
    st.text("0123456789abcdefABCDEFxg ", max_size=34),
)


def json_requests_for(timestamps: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """OTLP/JSON documents, mostly well-shaped, with any JSON at all in random places."""
    spans = _maybe(
        st.fixed_dictionaries(
            {
                "traceId": _maybe(hex_ids),
                "spanId": _maybe(hex_ids),
                "name": _maybe(json_text),
                "startTimeUnixNano": _maybe(_json_int_text(timestamps)),
                "endTimeUnixNano": _maybe(_json_int_text(timestamps)),
                "attributes": json_attributes,
            },
            optional={
                "parentSpanId": _maybe(hex_ids),
                "kind": _maybe(st.one_of(st.integers(-1, 7), st.just("SPAN_KIND_CLIENT"))),
                "status": _maybe(
                    st.fixed_dictionaries(
                        {},
                        optional={"code": _maybe(st.integers(0, 3)), "message": _maybe(json_text)},
                    )
                ),
            },
        )
    )
    scope = _maybe(st.fixed_dictionaries({"spans": _maybe(st.lists(spans, max_size=3))}))
    resource = _maybe(st.fixed_dictionaries({"attributes": json_attributes}))
    resource_spans = _maybe(
        st.fixed_dictionaries(
            {"resource": resource, "scopeSpans": _maybe(st.lists(scope, max_size=2))}
        )
    )
    return _maybe(
        st.fixed_dictionaries({"resourceSpans": _maybe(st.lists(resource_spans, max_size=2))})
    )


# The year 9999 in nanoseconds is beyond uint64: OTLP/JSON can write it, protobuf cannot.
json_requests = json_requests_for(st.one_of(uint64, st.just(253_402_300_799_000_000_000)))


def json_body(document: Any, ascii_only: bool) -> bytes:
    """OTLP/JSON bytes; lone surrogates become \\ud800 escapes, or invalid UTF-8 when not ASCII."""
    return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --- the property every stored row must have --------------------------------------------
def _reject_constant(name: str) -> Any:
    raise AssertionError(f"JSON for a jsonb column holds {name}, which PostgreSQL refuses")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def assert_storable(row: BuiltRow, limit: int) -> None:
    """What PostgreSQL needs of a row: no NUL, valid UTF-8, strict JSON, finite numbers."""
    for column, kind, value in zip(COLUMNS, COLUMN_TYPES, row.values):
        if value is None:
            continue
        if kind == "text":
            assert isinstance(value, str), column
            assert "\x00" not in value, column
            value.encode("utf-8")  # raises on a lone surrogate
            assert len(value) <= 1_024 + 40, column
        elif kind == "float8":
            assert isinstance(value, float) and math.isfinite(value), (column, value)
        elif kind == "int8":
            assert isinstance(value, int) and 0 <= value <= MAX_TOKENS, (column, value)
        elif kind == "jsonb":
            text = dumps(value)
            text.encode("utf-8")
            assert "\\u0000" not in text and "\x00" not in text, column
            parsed = json.loads(text, parse_constant=_reject_constant)
            assert _depth(parsed) <= 40, column
            _assert_strings_bounded(parsed, limit)


def _assert_strings_bounded(value: Any, limit: int) -> None:
    if isinstance(value, str):
        assert len(value) <= limit + 40
    elif isinstance(value, dict):
        for k, v in value.items():
            assert len(k) <= 1_024 + 40
            _assert_strings_bounded(v, limit)
    elif isinstance(value, list):
        for v in value:
            _assert_strings_bounded(v, limit)
