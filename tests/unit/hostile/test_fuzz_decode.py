"""Property-based fuzzing of OTLP decoding and normalization (no server, no database).

For any body, :func:`decode_protobuf` / :func:`decode_json` either return what they
could read or raise :class:`DecodeError` — nothing else escapes; and for every span
they return, :func:`build_row` either refuses it with :class:`RowError` or returns a
row PostgreSQL will take (no NUL, valid UTF-8, strict JSON, finite numbers, bounded
strings and nesting). The same holds for ``build_row`` fed arbitrary Python values,
as the in-process exporter may.

Each test runs ``FUZZ_EXAMPLES`` examples (see ``strategies.py``).
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.unit.hostile.strategies import (
    FUZZ,
    KNOWN_KEYS,
    assert_storable,
    json_body,
    json_requests,
    json_text,
    pb_requests,
)
from tokentrace.dialects import MAX_TOKENS, as_number, as_token_count, normalize
from tokentrace.receiver.decode import Decoded, DecodeError, decode_json, decode_protobuf
from tokentrace.store.rows import RowError, SpanData, build_row

LIMIT = 256  # a small cut, so truncation is exercised often


def _rows_of(decoded: Decoded) -> int:
    built = 0
    for span in decoded.spans:
        try:
            row = build_row(span, LIMIT)
        except RowError:
            continue
        assert_storable(row, LIMIT)
        built += 1
    for rejection in decoded.rejected:
        assert rejection.reason
        rejection.describe().encode("utf-8", "surrogatepass")
    return built


def _decode(decode: Any, body: bytes) -> Decoded | None:
    try:
        decoded: Decoded = decode(body)
    except DecodeError:
        return None
    return decoded


@FUZZ
@given(pb_requests)
def test_structured_protobuf_requests(request: ExportTraceServiceRequest) -> None:
    body = request.SerializeToString()
    decoded = _decode(decode_protobuf, body)
    assert decoded is not None, "a well-formed ExportTraceServiceRequest must decode"
    _rows_of(decoded)


@FUZZ
@given(pb_requests, st.randoms(use_true_random=False))
def test_mutated_protobuf_requests(request: ExportTraceServiceRequest, rng: random.Random) -> None:
    body = bytearray(request.SerializeToString())
    for _ in range(rng.randint(1, 6)):
        if not body:
            break
        action = rng.randrange(3)
        position = rng.randrange(len(body))
        if action == 0:
            body[position] = rng.randrange(256)
        elif action == 1:
            del body[position : position + rng.randint(1, 8)]
        else:
            body[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    decoded = _decode(decode_protobuf, bytes(body))
    if decoded is not None:
        _rows_of(decoded)


@FUZZ
@given(st.binary(max_size=2_000))
def test_random_bytes_as_protobuf_and_json(body: bytes) -> None:
    for decode in (decode_protobuf, decode_json):
        decoded = _decode(decode, body)
        if decoded is not None:
            _rows_of(decoded)


@FUZZ
@given(json_requests, st.booleans())
def test_structured_json_requests(document: Any, ascii_only: bool) -> None:
    decoded = _decode(decode_json, json_body(document, ascii_only))
    if decoded is not None:
        _rows_of(decoded)


@FUZZ
@given(json_requests, st.randoms(use_true_random=False))
def test_mutated_json_requests(document: Any, rng: random.Random) -> None:
    text = list(json_body(document, True).decode("ascii"))
    for _ in range(rng.randint(1, 4)):
        if not text:
            break
        position = rng.randrange(len(text))
        text[position : position + rng.randint(0, 3)] = rng.choice(
            ['"', "{", "}", "[", "]", ",", ":", "0", "-", "e9", "null", "\\u0000", "\\ud800", "\\"]
        )
    decoded = _decode(decode_json, "".join(text).encode())
    if decoded is not None:
        _rows_of(decoded)


# Whatever an application's own code may put in span attributes (the in-process
# exporter does not go through the OTLP decoder): unbounded ints, bytes, tuples,
# nested mappings with non-string keys, lone surrogates.
python_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        json_text,
        st.binary(max_size=8),
        st.sampled_from((10**400, -(10**400), 2**64, "12", "²", "NaN", 1e300)),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.one_of(json_text, st.integers()), children, max_size=3),
    ),
    max_leaves=10,
)


@FUZZ
@given(
    st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), json_text), python_values, max_size=10),
    st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), json_text), python_values, max_size=4),
    json_text,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
def test_build_row_on_arbitrary_python_values(
    attributes: dict[str, Any], resource: dict[str, Any], name: str, start: int, end: int
) -> None:
    span = SpanData(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        parent_span_id=None,
        name=name,
        kind="CLIENT",
        start_ns=start,
        end_ns=end,
        attributes=attributes,
        resource=resource,
    )
    try:
        row = build_row(span, LIMIT)
    except RowError:
        return
    assert_storable(row, LIMIT)


@FUZZ
@given(python_values)
def test_token_counts_and_numbers_never_raise(value: Any) -> None:
    count = as_token_count(value)
    assert count is None or (isinstance(count, int) and 0 <= count <= MAX_TOKENS)
    number = as_number(value)
    assert number is None or number >= 0
    normalize({key: value for key in KNOWN_KEYS})
