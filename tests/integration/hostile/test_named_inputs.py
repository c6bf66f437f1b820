"""Named hostile inputs, sent to a real receiver and checked in PostgreSQL.

Each case says what the defined answer is: stored (and how it was altered, noted
under the ``tokentrace.sanitized`` attribute), the one span refused with a reason
(``partial_success``), or the whole request refused (400 / ``INVALID_ARGUMENT``,
413 / ``RESOURCE_EXHAUSTED``). After each, the receiver still answers.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import urllib.parse
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.helpers import query
from tests.integration.hostile.conftest import (
    JSON,
    SECOND_NS,
    Clients,
    count_spans,
    depth,
    js_body,
    js_kv,
    js_span,
    pb_body,
    pb_kv,
    pb_span,
    pb_str,
    rejected,
    stored,
)
from tests.integration.receiver.clients import (
    START_NS,
    Http,
    grpc_export,
    span_ids,
    valid_request,
)
from tests.integration.receiver.conftest import StartReceiver
from tests.integration.receiver.test_serve_process import ServeProcess
from tokentrace.receiver.server import Receiver

MODEL = "gen_ai.request.model"
OUTPUT = "gen_ai.usage.output_tokens"
INPUT = "gen_ai.usage.input_tokens"
CHAT = pb_kv("gen_ai.operation.name", pb_str("chat"))


def _still_serving(receiver: Receiver) -> None:
    http = Http(receiver.http_port)
    try:
        assert http.post(valid_request(1, salt=777)).status == 200
        assert http.get("/healthz").status == 200
    finally:
        http.close()
    assert grpc_export(receiver.grpc_port, valid_request(1, salt=778)).code == grpc.StatusCode.OK


def _sanitized(row: dict[str, Any]) -> str:
    return " | ".join(row["attributes"].get("tokentrace.sanitized", []))


# --- NUL ----------------------------------------------------------------------------------
def test_postgresql_refuses_nul_in_text_and_jsonb(db: str) -> None:
    """Why NUL must be replaced before COPY: both column types refuse it."""
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(psycopg.DataError):
            conn.execute("SELECT %s::text", ("a\x00b",))
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            conn.execute("""SELECT '"a\\u0000b"'::jsonb""")


def test_nul_bytes_in_every_string_field_are_stored_as_replacement_characters(
    receiver: Receiver, db: str, clients: Clients
) -> None:
    (t1, s1), (t2, s2) = span_ids(2, salt=1)
    attributes = [
        CHAT,
        pb_kv(MODEL, pb_str("m\x00x")),
        pb_kv("error.type", pb_str("E\x00")),
        pb_kv("k\x00ey", pb_str("v\x00")),
        pb_kv(
            "nested",
            AnyValue(
                kvlist_value=KeyValueList(
                    values=[
                        pb_kv("a\x00", AnyValue(array_value=ArrayValue(values=[pb_str("x\x00")])))
                    ]
                )
            ),
        ),
        pb_kv(OUTPUT, AnyValue(int_value=10)),
    ]
    span = pb_span(t1, s1, attributes, name="chat\x00m", status_message="boom\x00")
    http = clients(receiver.http_port)
    assert rejected(http.post(pb_body([span], service="svc\x00"))) == (0, "")
    row = stored(db, s1)
    assert (row["name"], row["model"], row["service_name"], row["error_type"]) == (
        "chat\ufffdm", "m\ufffdx", "svc\ufffd", "E\ufffd",
    )  # fmt: skip
    assert row["attributes"]["k\ufffdey"] == "v\ufffd"
    assert row["attributes"]["nested"] == {"a\ufffd": ["x\ufffd"]}
    assert row["resource"]["service.name"] == "svc\ufffd"
    assert "NUL replaced" in _sanitized(row) and "\x00" not in json.dumps(row["attributes"])
    assert row["ms_per_token"] == 100.0  # the numbers are still derived

    # OTLP/JSON: "\u0000" escapes, in keys and values.
    body = js_body(
        [
            js_span(
                t2,
                s2,
                [
                    js_kv(MODEL, {"stringValue": "j\u0000"}),
                    js_kv("k\u0000", {"arrayValue": {"values": [{"stringValue": "\u0000"}]}}),
                ],
                name="\u0000",
            )
        ]
    )
    assert rejected(http.post(body, JSON)) == (0, "")
    row = stored(db, s2)
    assert (row["name"], row["model"]) == ("\ufffd", "j\ufffd")
    assert row["attributes"]["k\ufffd"] == ["\ufffd"]
    _still_serving(receiver)


# --- invalid UTF-8 ----------------------------------------------------------------------------
def test_invalid_utf8(receiver: Receiver, db: str, clients: Clients) -> None:
    """Protobuf: proto3 strings must be UTF-8, so a span carrying one that is not is
    refused with the parser's reason and the rest of the request is stored, on both
    protocols; a resource that is not UTF-8 refuses its spans. JSON: a body that is
    not UTF-8 is refused (400); a lone surrogate escape (valid JSON, not valid
    Unicode) is stored as "?"."""
    (t1, s1), (t2, s2), (t3, s3), (t4, s4) = span_ids(4, salt=2)
    good = pb_span(t1, s1, [CHAT, pb_kv(MODEL, pb_str("fine"))])
    marked = pb_span(t2, s2, [CHAT, pb_kv(MODEL, pb_str("PLACEHOLDER"))])
    body = pb_body([good, marked]).replace(
        b"PLACEHOLDER", b"bad\xff\xfe\xc0\x80!!!!"
    )  # same length
    http = clients(receiver.http_port)
    count, message = rejected(http.post(body))
    assert count == 1
    assert message.startswith(
        f"1 of 2 spans rejected: span {t2.hex()}/{s2.hex()}: not a valid protobuf Span ("
    )
    assert "bad UTF-8" in message
    assert stored(db, s1)["model"] == "fine"
    call = grpc_export(receiver.grpc_port, body)
    assert call.code == grpc.StatusCode.OK and call.response is not None
    partial = ExportTraceServiceResponse.FromString(call.response).partial_success
    assert partial.rejected_spans == 1 and "bad UTF-8" in partial.error_message
    assert count_spans(db) == 1  # the good span, once: the gRPC copy was a duplicate

    bad_resource = pb_body([pb_span(t4, s4, [CHAT])], service="PLACEHOLDER").replace(
        b"PLACEHOLDER", b"svc\xff\xfe\xc0\x80!!!!"
    )
    count, message = rejected(http.post(bad_resource))
    assert count == 1 and "its resource is not a valid protobuf Resource" in message
    assert count_spans(db) == 1

    not_utf8 = js_body([js_span(t1, s1, [js_kv(MODEL, {"stringValue": "PLACEHOLDER"})])])
    result = http.post(not_utf8.replace(b"PLACEHOLDER", b"\xff\xfe"), JSON)
    assert result.status == 400 and "not valid JSON" in result.json()["message"]

    surrogates = js_body(
        [
            js_span(
                t3,
                s3,
                [
                    js_kv(MODEL, {"stringValue": "a\ud800b"}),
                    js_kv("\udfff", {"intValue": "1"}),
                    # A key that needs cleaning, with a value that does too: the change
                    # is noted under the cleaned key (the raw one cannot be stored).
                    js_kv("k\udc00", {"stringValue": "v\ud800"}),
                ],
            )
        ]
    )
    assert b"\\ud800" in surrogates
    assert rejected(http.post(surrogates, JSON)) == (0, "")
    row = stored(db, s3)
    assert row["model"] == "a?b" and row["attributes"]["?"] == 1 and row["attributes"]["k?"] == "v?"
    assert "invalid unicode replaced" in _sanitized(row)
    _still_serving(receiver)


# --- 10,000 attributes ------------------------------------------------------------------------
def test_ten_thousand_attributes_on_one_span(receiver: Receiver, db: str, clients: Clients) -> None:
    (t1, s1), (t2, s2) = span_ids(2, salt=3)
    many = [pb_kv(f"attr.{i}", AnyValue(int_value=i)) for i in range(10_000)]
    span = pb_span(
        t1, s1, [CHAT, pb_kv(MODEL, pb_str("wide")), pb_kv(OUTPUT, AnyValue(int_value=4)), *many]
    )
    assert grpc_export(receiver.grpc_port, pb_body([span])).code == grpc.StatusCode.OK
    js_many = [js_kv(f"attr.{i}", {"intValue": str(i)}) for i in range(10_000)]
    http = clients(receiver.http_port)
    assert rejected(http.post(js_body([js_span(t2, s2, js_many)]), JSON)) == (0, "")
    for span_id in (s1, s2):
        [(keys, last)] = query(
            db,
            "SELECT (SELECT count(*) FROM jsonb_object_keys(attributes)), attributes->'attr.9999' "
            "FROM tokentrace.spans WHERE span_id = %s",
            (span_id,),
        )
        assert keys >= 10_000 and last == 9999
    assert stored(db, s1)["ms_per_token"] == 250.0
    _still_serving(receiver)


# --- a 5 MB attribute value -------------------------------------------------------------------
FIVE_MB = 5 * 1024 * 1024


def _big_span(trace_id: bytes, span_id: bytes) -> Span:
    return pb_span(
        trace_id,
        span_id,
        [CHAT, pb_kv(MODEL, pb_str("M" * FIVE_MB)), pb_kv("big", pb_str("é" * FIVE_MB))],
    )


def test_five_megabyte_attribute_value_is_truncated_with_a_marker(
    start_receiver: StartReceiver, db: str, clients: Clients
) -> None:
    receiver = start_receiver()
    (t1, s1), (t2, s2), (t3, s3) = span_ids(3, salt=4)
    http = clients(receiver.http_port)
    assert rejected(http.post(pb_body([_big_span(t1, s1)]))) == (0, "")
    row = stored(db, s1)
    assert row["attributes"]["big"] == "é" * 65_536 + f"…[truncated {FIVE_MB - 65_536} chars]"
    # A text column holds at most 1,024 characters (cut from the already cut attribute).
    assert row["model"].startswith("M" * 1_024 + "…[truncated ") and len(row["model"]) < 1_060
    assert "big: truncated 5177344 chars" in _sanitized(row)

    # OTLP/JSON: the same answer.
    js = js_span(t2, s2, [js_kv("big", {"stringValue": "x" * FIVE_MB})])
    assert rejected(http.post(js_body([js]), JSON)) == (0, "")
    assert stored(db, s2)["attributes"]["big"].endswith(f"…[truncated {FIVE_MB - 65_536} chars]")

    # gRPC: 10 MB of request is over the default 4 MiB limit (not retryable) ...
    call = grpc_export(receiver.grpc_port, pb_body([_big_span(t3, s3)]))
    assert call.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # ... and stored, truncated, by a receiver allowed larger requests.
    roomy = start_receiver(grpc_max_request_bytes=32 * 1024 * 1024)
    assert grpc_export(roomy.grpc_port, pb_body([_big_span(t3, s3)])).code == grpc.StatusCode.OK
    assert len(stored(db, s3)["attributes"]["big"]) == 65_536 + len("…[truncated 5177344 chars]")
    _still_serving(receiver)


def test_the_attribute_limit_is_configurable(
    db: str, subprocess_env: dict[str, str], clients: Clients
) -> None:
    """``TOKENTRACE_MAX_ATTRIBUTE_CHARS`` of a ``tokentrace serve`` process."""
    env = dict(subprocess_env, TOKENTRACE_MAX_ATTRIBUTE_CHARS="1000")
    server = ServeProcess(["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0"], env)
    try:
        port = int(
            server.wait_for(r"OTLP/HTTP and reports listening on http://127\.0\.0\.1:(\d+)$").group(
                1
            )
        )
        [(trace_id, span_id)] = span_ids(1, salt=5)
        http = clients(port)
        assert rejected(http.post(pb_body([_big_span(trace_id, span_id)]))) == (0, "")
    finally:
        server.stop()
    assert (
        stored(db, span_id)["attributes"]["big"]
        == "é" * 1000 + f"…[truncated {FIVE_MB - 1000} chars]"
    )


# --- deep nesting -------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand (the library refuses deep messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_array(levels: int) -> bytes:
    """An AnyValue of ``levels`` arrays, each holding the next, around "leaf"."""
    value = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(levels):
        value = _field(5, _field(1, value))  # AnyValue.array_value{ values: [value] }
    return value


def _deep_kvlist(levels: int) -> bytes:
    value = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(levels):
        pair = _field(1, b"k") + _field(2, value)  # KeyValue{key: "k", value}
        value = _field(6, _field(1, pair))  # AnyValue.kvlist_value{ values: [pair] }
    return value


def _span_with_raw_attribute(trace_id: bytes, span_id: bytes, key: str, value: bytes) -> bytes:
    span = pb_span(trace_id, span_id, [CHAT, pb_kv(MODEL, pb_str("deep"))]).SerializeToString()
    span += _field(9, _field(1, key.encode()) + _field(2, value))  # one more Span.attributes entry
    return _field(1, _field(2, _field(2, span)))  # request{resource_spans{scope_spans{spans}}}


def _js_nested(levels: int, kind: str) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(levels):
        if kind == "array":
            value = {"arrayValue": {"values": [value]}}
        else:
            value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    return value


def test_deeply_nested_values(receiver: Receiver, db: str, clients: Clients) -> None:
    """Nesting is cut at 32 levels (the cut level stored as null). Beyond what each
    decoder takes the span or the request is refused: protobuf's recursion limit
    counted from the span (100 messages: 49 levels of arrays, 32 of kvlists) and
    OTLP/JSON AnyValues deeper than 64 levels refuse that span; the JSON parser's own
    limit refuses the request (400)."""
    ids = span_ids(9, salt=6)
    http = clients(receiver.http_port)
    body = _span_with_raw_attribute(*ids[0], "deep", _deep_array(40))
    assert rejected(http.post(body)) == (0, "")
    row = stored(db, ids[0][1])
    assert depth(row["attributes"]["deep"]) == 32 and '"leaf"' not in json.dumps(row["attributes"])
    assert "nesting deeper than 32 cut" in _sanitized(row)
    body = _span_with_raw_attribute(*ids[1], "deep", _deep_kvlist(31))
    assert rejected(http.post(body)) == (0, "")
    assert depth(stored(db, ids[1][1])["attributes"]["deep"]) == 31

    body = _span_with_raw_attribute(*ids[7], "deep", _deep_array(49))
    assert rejected(http.post(body)) == (0, "")
    assert depth(stored(db, ids[7][1])["attributes"]["deep"]) == 32

    for too_deep in (_deep_array(50), _deep_kvlist(33), _deep_array(100_000)):
        body = _span_with_raw_attribute(*ids[2], "deep", too_deep)
        count, message = rejected(http.post(body))
        assert count == 1 and "Exceeded upb_DecodeOptions_MaxDepth" in message
        call = grpc_export(receiver.grpc_port, body)
        assert call.code == grpc.StatusCode.OK and call.response is not None
        assert (
            ExportTraceServiceResponse.FromString(call.response).partial_success.rejected_spans == 1
        )

    for (trace_id, span_id), kind in zip(ids[3:5], ("array", "kvlist")):
        body = js_body([js_span(trace_id, span_id, [js_kv("deep", _js_nested(40, kind))])])
        assert rejected(http.post(body, JSON)) == (0, "")
        assert depth(stored(db, span_id)["attributes"]["deep"]) == 32
    body = js_body(
        [js_span(*ids[5], [js_kv("deep", _js_nested(70, "array"))]), js_span(*ids[6], [])]
    )
    count, message = rejected(http.post(body, JSON))
    assert count == 1 and "nested deeper than 64 levels" in message
    stored(db, ids[6][1])  # the other span of the request
    result = http.post(b'{"resourceSpans": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", JSON)
    assert result.status == 400 and "not valid JSON" in result.json()["message"]
    assert query(db, "SELECT count(*) FROM tokentrace.spans WHERE span_id = %s", (ids[2][1],)) == [
        (0,)
    ]
    _still_serving(receiver)


# --- SQL in every string field -----------------------------------------------------------------
SQL_PAYLOADS = (
    "'); DROP TABLE tokentrace.spans; --",
    "$$; DROP SCHEMA tokentrace CASCADE; $$",
    "\\'; TRUNCATE tokentrace.spans; --",
    "x' OR '1'='1",
    "%s %(model)s {} \\x00 E'\\\\'",
    '"; DELETE FROM tokentrace.spans WHERE "1"="1',
)


def _relations(dsn: str) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'tokentrace' ORDER BY 1",
    )


def test_sql_in_every_string_field_is_stored_literally(
    receiver: Receiver, db: str, clients: Clients
) -> None:
    now = time.time_ns() - 60 * SECOND_NS  # within the report's window
    http = clients(receiver.http_port)
    [(trace_id, span_id)] = span_ids(1, salt=70)
    assert rejected(http.post(pb_body([pb_span(trace_id, span_id, [CHAT], start=now)]))) == (0, "")
    before = _relations(db)  # today's partition exists now
    ids = span_ids(2 * len(SQL_PAYLOADS), salt=7)
    for i, sql in enumerate(SQL_PAYLOADS):
        (t1, s1), (t2, s2) = ids[2 * i], ids[2 * i + 1]
        attributes = [
            pb_kv("gen_ai.operation.name", pb_str(sql)),
            pb_kv("gen_ai.provider.name", pb_str(sql)),
            pb_kv(MODEL, pb_str(sql)),
            pb_kv("error.type", pb_str(sql)),
            pb_kv(sql, pb_str(sql)),
            pb_kv(OUTPUT, AnyValue(int_value=5)),
        ]
        span = pb_span(t1, s1, attributes, name=sql, status_message=sql, start=now)
        assert rejected(http.post(pb_body([span], service=sql))) == (0, "")
        js_attributes = [
            js_kv("gen_ai.operation.name", {"stringValue": sql}),
            js_kv(MODEL, {"stringValue": sql}),
            js_kv(sql, {"stringValue": sql}),
        ]
        assert rejected(
            http.post(
                js_body([js_span(t2, s2, js_attributes, name=sql, start=str(now))], sql), JSON
            )
        ) == (0, "")
        row = stored(db, s1)
        assert (
            row["name"],
            row["model"],
            row["operation"],
            row["service_name"],
            row["error_type"],
        ) == ((sql,) * 5)
        assert row["provider"] == sql.lower()  # provider names are normalized to lower case
        assert row["attributes"][sql] == sql and row["resource"]["service.name"] == sql
        row = stored(db, s2)
        assert (row["name"], row["model"], row["attributes"][sql]) == (sql, sql, sql)
    assert _relations(db) == before  # no table dropped, none created
    assert count_spans(db) == 1 + 2 * len(SQL_PAYLOADS)
    # The report filters by the payload as a value, too.
    model = SQL_PAYLOADS[0]
    result = http.get(f"/telemetry/efficiency?hours=9600&model={urllib.parse.quote(model)}")
    assert result.status == 200
    [entry] = result.json()["efficiency"]
    assert entry["model"] == model and entry["calls"] == 2


# --- token counts of -1, 1e300, "12", NaN --------------------------------------------------------
def test_token_counts_of_minus_one_1e300_string_12_and_nan(
    receiver: Receiver, db: str, clients: Clients
) -> None:
    """A count that cannot be one (negative, non-integral, non-finite, beyond 2**40)
    reads as missing — no ms/token from it — and is kept in the attributes as sent
    (NaN as the text "nan", since JSON has no NaN); a decimal string is a count."""
    values: dict[str, AnyValue] = {
        "minus-one": AnyValue(int_value=-1),
        "huge": AnyValue(double_value=1e300),
        "string-12": AnyValue(string_value="12"),
        "nan": AnyValue(double_value=math.nan),
    }
    ids = span_ids(8, salt=8)
    spans = [
        pb_span(
            t,
            s,
            [CHAT, pb_kv(MODEL, pb_str(f"pb-{name}")), pb_kv(OUTPUT, value), pb_kv(INPUT, value)],
        )
        for (t, s), (name, value) in zip(ids, values.items())
    ]
    http = clients(receiver.http_port)
    assert rejected(http.post(pb_body(spans))) == (0, "")
    js_values: dict[str, dict[str, Any]] = {
        "minus-one": {"intValue": "-1"},
        "huge": {"doubleValue": 1e300},
        "string-12": {"stringValue": "12"},
        "nan": {"doubleValue": "NaN"},
    }
    js_spans = [
        js_span(t, s, [js_kv("gen_ai.operation.name", {"stringValue": "chat"}),
                       js_kv(MODEL, {"stringValue": f"js-{name}"}), js_kv(OUTPUT, value), js_kv(INPUT, value)])
        for (t, s), (name, value) in zip(ids[4:], js_values.items())
    ]  # fmt: skip
    assert rejected(http.post(js_body(js_spans), JSON)) == (0, "")
    expected_attribute = {"minus-one": -1, "huge": 1e300, "string-12": "12", "nan": "nan"}
    for (_, span_id), name in zip(ids, [*values, *js_values]):
        row = stored(db, span_id)
        kept = row["attributes"][OUTPUT]
        # jsonb numbers are exact decimals: 1e300 comes back as the integer it is.
        assert (float(kept) if name == "huge" else kept) == expected_attribute[name], name
        if name == "string-12":
            assert (row["input_tokens"], row["output_tokens"]) == (12, 12)
            assert row["ms_per_token"] == pytest.approx(1000 / 12)
            assert row["token_source"] == "reported"
        else:
            assert (row["input_tokens"], row["output_tokens"], row["ms_per_token"]) == (
                None,
            ) * 3, name
            assert row["token_source"] == "missing"
    assert "non-finite number kept as text" in _sanitized(stored(db, ids[3][1]))

    # An OTLP/JSON intValue must be an int64: 1e300 there refuses the span (with a reason).
    (t, s), (t2, s2) = span_ids(2, salt=9)
    bad = [
        js_span(t, s, [js_kv(OUTPUT, {"intValue": 1e300})]),
        js_span(t2, s2, [js_kv(OUTPUT, {"intValue": "1e300"})]),
    ]
    count, message = rejected(http.post(js_body(bad), JSON))
    assert (
        count == 2
        and "intValue out of range for an int64" in message
        and "must be an integer" in message
    )
    assert http.get("/telemetry/efficiency?hours=9600").status == 200


# --- timestamps of 0 and the year 9999 ------------------------------------------------------------
YEAR_9999_NS = 253_402_300_799 * SECOND_NS  # 9999-12-31T23:59:59Z


def test_timestamps_of_zero_and_year_9999(receiver: Receiver, db: str, clients: Clients) -> None:
    """0 is stored as 1970-01-01 (an unset OTLP time). The year 9999 cannot be written
    in protobuf (fixed64 nanoseconds end in 2554; the latest of those is stored); in
    OTLP/JSON it is a 21-digit string or a number past uint64, and that span is refused
    with the reason, the others stored."""
    with pytest.raises(ValueError):
        Span(start_time_unix_nano=YEAR_9999_NS)
    (t0, s0), (t1, s1), (t2, s2), (t3, s3), (t4, s4), (t5, s5) = span_ids(6, salt=10)
    http = clients(receiver.http_port)
    spans = [
        pb_span(t0, s0, [CHAT], start=0, end=0),
        pb_span(t1, s1, [CHAT], start=2**64 - 1, end=2**64 - 1),
    ]
    assert rejected(http.post(pb_body(spans))) == (0, "")
    row = stored(db, s0)
    assert row["start_time"] == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    assert row["duration_ms"] == 0.0
    assert stored(db, s1)["start_time"] == dt.datetime(
        2554, 7, 21, 23, 34, 33, 709551, tzinfo=dt.timezone.utc
    )

    js = [
        js_span(t2, s2, [], start="0", end="0"),
        js_span(t3, s3, [], start=str(YEAR_9999_NS), end=str(YEAR_9999_NS)),
        js_span(t4, s4, [], start=float(YEAR_9999_NS), end=float(YEAR_9999_NS)),
        js_span(
            t5, s5, [], start=str(START_NS), end=str(START_NS - SECOND_NS)
        ),  # ends before it starts
    ]
    count, message = rejected(http.post(js_body(js), JSON))
    assert count == 2
    assert "startTimeUnixNano is out of range" in message
    assert "startTimeUnixNano is out of range for a uint64" in message
    assert stored(db, s2)["start_time"] == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    row = stored(db, s5)
    assert row["duration_ms"] is None and "ends before it starts" in _sanitized(row)
    assert query(
        db, "SELECT count(*) FROM tokentrace.spans WHERE span_id IN (%s, %s)", (s3, s4)
    ) == [(0,)]
    # The reports still answer with spans in 1970 and 2554 stored.
    for path in ("/telemetry/efficiency", "/telemetry/60day", "/telemetry/footprint"):
        assert http.get(path).status == 200, path
    _still_serving(receiver)
