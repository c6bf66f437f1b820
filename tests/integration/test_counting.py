"""Every call counted, and counted once, on a real PostgreSQL.

Two rules (migration 0100, docs/reports.md "Which spans count"):

* a span with a model that is not a model load is a call, whatever dialect it speaks
  and whether or not it names an operation;
* a call span whose child is a call span is a wrapper: only the innermost call counts,
  whichever of the two is stored first, in one batch or two, from one writer or two at
  once, retried or not.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.helpers import own_database, query
from tokentrace.store.migrate import available, migrate
from tokentrace.store.rows import COLUMNS, SpanData, build_row
from tokentrace.store.writer import SpanWriter

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# One span per dialect: (span name, attributes, stored operation, model, input, output).
DIALECTS: dict[str, tuple[str, dict[str, Any], str | None, str, int | None, int | None]] = {
    "genai_current": (
        "chat gpt-4o-mini",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 80,
        },
        "chat", "gpt-4o-mini", 12, 80,
    ),
    "genai_deprecated_no_operation": (
        "chat gpt-4",
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4",
            "gen_ai.usage.prompt_tokens": 30,
            "gen_ai.usage.completion_tokens": 50,
        },
        "chat", "gpt-4", 30, 50,
    ),
    "openllmetry_request_type": (
        "openai.completion",
        {
            "gen_ai.system": "OpenAI",
            "llm.request.type": "completion",
            "gen_ai.request.model": "gpt-3.5-turbo-instruct",
            "gen_ai.usage.prompt_tokens": 7,
            "gen_ai.usage.completion_tokens": 21,
            "llm.usage.total_tokens": 28,
        },
        "text_completion", "gpt-3.5-turbo-instruct", 7, 21,
    ),
    "openllmetry_name_only": (
        "ollama.chat",
        {
            "gen_ai.system": "Ollama",
            "gen_ai.request.model": "llama3.2",
            "gen_ai.response.model": "llama3.2:latest",
            "gen_ai.usage.prompt_tokens": 26,
            "gen_ai.usage.completion_tokens": 100,
        },
        "chat", "llama3.2:latest", 26, 100,
    ),
    "openinference": (
        "ChatCompletion",
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "mistral-7b-instruct",
            "llm.provider": "ollama",
            "llm.token_count.prompt": 5,
            "llm.token_count.completion": 40,
        },
        "chat", "mistral-7b-instruct", 5, 40,
    ),
    "openlit_no_operation": (
        "embeddings nomic-embed-text",
        {
            "gen_ai.system": "ollama",
            "gen_ai.request.model": "nomic-embed-text",
            "gen_ai.usage.input_tokens": 64,
        },
        "embeddings", "nomic-embed-text", 64, None,
    ),
    "hand_written_tokens_only": (
        "my_llm_step",
        {"gen_ai.request.model": "phi3", "gen_ai.usage.output_tokens": 9},
        "chat", "phi3", None, 9,
    ),
    "hand_written_model_only": (
        "my_llm_step",
        {"gen_ai.request.model": "phi3-mini", "gen_ai.usage.input_tokens": 3},
        None, "phi3-mini", 3, None,
    ),
}  # fmt: skip


def _ns(at: dt.datetime) -> int:
    return (at - EPOCH) // dt.timedelta(microseconds=1) * 1000


def _span(
    trace: int,
    span: int,
    *,
    parent: int | None = None,
    name: str = "chat llama3.2",
    model: str = "llama3.2",
    start: dt.datetime,
    seconds: float = 2.0,
    attributes: dict[str, Any] | None = None,
    input_tokens: int = 10,
    output_tokens: int = 100,
) -> SpanData:
    attrs = (
        attributes
        if attributes is not None
        else {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
        }
    )
    return SpanData(
        trace_id=trace.to_bytes(16, "big"),
        span_id=span.to_bytes(8, "big"),
        parent_span_id=None if parent is None else parent.to_bytes(8, "big"),
        name=name,
        kind="CLIENT",
        start_ns=_ns(start),
        end_ns=_ns(start) + int(seconds * 1e9),
        attributes=attrs,
        status="OK",
    )


def _write(dsn: str, *batches: Sequence[SpanData]) -> None:
    """Each batch in a transaction of its own, as separate requests would be."""
    writer = SpanWriter(dsn)
    try:
        for batch in batches:
            result = writer.write([build_row(s) for s in batch])
            assert not result.rejected, result.rejected
    finally:
        writer.close()


def _efficiency(dsn: str, hours: int = 1) -> dict[str, tuple[int, int, int]]:
    rows = query(
        dsn,
        "SELECT model, calls, input_tokens, output_tokens FROM tokentrace.efficiency(%s)",
        (dt.timedelta(hours=hours),),
    )
    return {model: (calls, tin, tout) for model, calls, tin, tout in rows}


def _series_calls(dsn: str) -> dict[str, int]:
    # Buckets that line up with the rollups' grain: read from the rollups.
    rows = query(
        dsn,
        "SELECT model, sum(calls)::int FROM tokentrace.efficiency_series_range("
        " date_trunc('hour', now()) - interval '1 hour', 'infinity', '5 minutes') GROUP BY model",
    )
    return dict(rows)


def _raw_series_calls(dsn: str) -> dict[str, int]:
    # A bucket that is not a rollup grain: read from the raw spans.
    rows = query(
        dsn,
        "SELECT model, sum(calls)::int FROM tokentrace.efficiency_series('2 hours', '7 minutes')"
        " GROUP BY model",
    )
    return dict(rows)


def _trends(dsn: str) -> dict[str, tuple[int, int]]:
    rows = query(
        dsn, "SELECT model, measurement_count, total_tokens_processed FROM tokentrace.model_trends_60d"
    )
    return {model: (n, tokens) for model, n, tokens in rows}


@pytest.fixture
def now() -> dt.datetime:
    # Well inside the current hour's five-minute buckets, so windows hold every span.
    return dt.datetime.now(UTC) - dt.timedelta(minutes=10)


# --- 1. every dialect's call is counted ----------------------------------------------
@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_each_dialect_is_counted_with_its_tokens(db: str, now: dt.datetime, dialect: str) -> None:
    name, attrs, operation, model, tokens_in, tokens_out = DIALECTS[dialect]
    _write(db, [_span(1, 1, name=name, attributes=attrs, start=now)])

    assert query(db, "SELECT operation, model FROM tokentrace.spans") == [(operation, model)]
    expected = (1, tokens_in or 0, tokens_out or 0)
    assert _efficiency(db) == {model: expected}
    assert _series_calls(db) == {model: 1}
    assert _raw_series_calls(db) == {model: 1}
    assert _trends(db) == {model: (1, (tokens_in or 0) + (tokens_out or 0))}
    [(measurements, models, tokens)] = query(
        db, "SELECT total_measurements, unique_models, total_tokens FROM tokentrace.stats_60d"
    )
    assert (measurements, models, tokens) == (1, 1, (tokens_in or 0) + (tokens_out or 0))


def test_a_call_without_an_operation_has_its_ms_per_token(db: str, now: dt.datetime) -> None:
    attrs = {"gen_ai.request.model": "phi3", "gen_ai.usage.output_tokens": 40}
    _write(db, [_span(1, 1, name="step", attributes=attrs, start=now, seconds=2.0)])
    [(weighted, p50)] = query(
        db, "SELECT weighted_ms_per_token, p50_ms_per_token FROM tokentrace.efficiency('1 hour')"
    )
    assert weighted == 50.0
    assert p50 == pytest.approx(50.0, rel=2 ** (1 / 32) - 1)


def test_a_load_is_not_a_call(db: str, now: dt.datetime) -> None:
    load = {"gen_ai.operation.name": "load_model", "gen_ai.request.model": "llama3.2"}
    _write(db, [_span(1, 1, name="load_model llama3.2", attributes=load, start=now)])
    assert query(db, "SELECT model, calls, loads FROM tokentrace.efficiency('1 hour')") == [
        ("llama3.2", 0, 1)
    ]


def test_spans_stored_without_an_operation_count_once_migrated(dsn: str) -> None:
    """A store written before 0100 (spans with no operation, and a wrapper pair)."""
    start = dt.datetime.now(UTC) - dt.timedelta(minutes=10)
    with own_database(dsn, "tt_counting_upgrade", migrated=False) as url:
        with psycopg.connect(url) as conn:
            conn.execute(
                "CREATE SCHEMA tokentrace; CREATE TABLE tokentrace.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for m in available():
                if m.version < 100:
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO tokentrace.schema_migrations VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
        no_op = {"gen_ai.request.model": "phi3", "gen_ai.usage.output_tokens": 9}
        rows = [
            # Stored before 0100, operation inferred or not: NULL as 0090 stored them.
            _span(1, 1, name="step", attributes=no_op, start=start),
            _span(2, 1, name="framework", model="gpt-4o", start=start, seconds=3),
            _span(2, 2, parent=1, model="gpt-4o-2024-08-06", start=start, output_tokens=70),
        ]
        _insert_as_0090(url, rows)
        # 0090's reports: the span without an operation is "phi3, 0 calls", the pair two calls.
        assert _efficiency(url) == {
            "phi3": (0, 0, 0), "gpt-4o": (1, 10, 100), "gpt-4o-2024-08-06": (1, 10, 70)
        }  # fmt: skip

        assert migrate(url)[0] == "0100_calls_count_once.sql"
        assert _efficiency(url) == {"phi3": (1, 0, 9), "gpt-4o-2024-08-06": (1, 10, 70)}
        assert query(url, "SELECT span_id, wrapper FROM tokentrace.spans ORDER BY trace_id, span_id") == [
            ((1).to_bytes(8, "big"), False),
            ((1).to_bytes(8, "big"), True),
            ((2).to_bytes(8, "big"), False),
        ]
        # A child arriving now for a parent stored before the upgrade finds it.
        _write(url, [_span(2, 3, parent=1, model="gpt-4o-2024-08-06", start=start, output_tokens=5)])
        assert _efficiency(url) == {"phi3": (1, 0, 9), "gpt-4o-2024-08-06": (2, 20, 75)}
        _assert_rollups_equal_rebuild(url)


def _insert_as_0090(dsn: str, spans: Sequence[SpanData]) -> None:
    """Rows as 0090's writer stored them: the operation the span named, nothing inferred."""
    with psycopg.connect(dsn) as conn:
        days = sorted({(EPOCH + dt.timedelta(microseconds=s.start_ns // 1000)).date() for s in spans})
        conn.execute("SELECT tokentrace.ensure_partitions(%s::date[])", (days,))
        for span in spans:
            values = list(build_row(span).values)
            values[COLUMNS.index("operation")] = span.attributes.get("gen_ai.operation.name")
            values[-2:] = [Jsonb(values[-2]), Jsonb(values[-1])]
            conn.execute(
                f"INSERT INTO tokentrace.spans ({', '.join(COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                values,
            )


# --- 2. one call, one count --------------------------------------------------------------
def _pair(now: dt.datetime, parent_model: str = "llama3.2") -> tuple[SpanData, SpanData]:
    parent = _span(7, 1, name="ollama.chat", model=parent_model, start=now, seconds=2.5,
                   output_tokens=100)  # fmt: skip
    child = _span(7, 2, parent=1, start=now + dt.timedelta(milliseconds=3), output_tokens=100)
    return parent, child


def _wrappers(dsn: str) -> list[tuple[bytes, bool]]:
    return query(dsn, "SELECT span_id, wrapper FROM tokentrace.spans ORDER BY span_id")


@pytest.mark.parametrize("order", ["child_first", "parent_first", "one_batch"])
def test_a_wrapper_and_its_call_count_once(db: str, now: dt.datetime, order: str) -> None:
    parent, child = _pair(now)
    batches = {"child_first": [[child], [parent]], "parent_first": [[parent], [child]],
               "one_batch": [[parent, child]]}[order]  # fmt: skip
    _write(db, *batches)

    assert _efficiency(db) == {"llama3.2": (1, 10, 100)}
    assert _wrappers(db) == [((1).to_bytes(8, "big"), True), ((2).to_bytes(8, "big"), False)]
    assert _series_calls(db) == {"llama3.2": 1}
    assert _raw_series_calls(db) == {"llama3.2": 1}
    assert _trends(db) == {"llama3.2": (1, 110)}
    [(measurements, models)] = query(db, "SELECT total_measurements, unique_models FROM tokentrace.stats_60d")
    assert (measurements, models) == (1, 1)
    # The child's own ms/token is the one counted, not the wrapper's longer span's.
    [(weighted,)] = query(db, "SELECT weighted_ms_per_token FROM tokentrace.efficiency('1 hour')")
    assert weighted == 20.0
    _assert_rollups_equal_rebuild(db)


@pytest.mark.parametrize("parent_first", [True, False])
def test_a_framework_span_with_another_model_name_is_not_a_second_call(
    db: str, now: dt.datetime, parent_first: bool
) -> None:
    parent, child = _pair(now, parent_model="ChatOllama")
    _write(db, *([[parent], [child]] if parent_first else [[child], [parent]]))
    assert _efficiency(db) == {"llama3.2": (1, 10, 100)}
    assert _trends(db) == {"llama3.2": (1, 110)}
    assert query(db, "SELECT unique_models FROM tokentrace.stats_60d") == [(1,)]
    assert query(db, "SELECT model FROM tokentrace.efficiency_change") == [("llama3.2",)]
    _assert_rollups_equal_rebuild(db)


def test_only_the_innermost_of_three_counts_and_siblings_each_count(
    db: str, now: dt.datetime
) -> None:
    agent = _span(9, 1, name="invoke_agent", model="llama3.2", start=now, seconds=9)
    framework = _span(9, 2, parent=1, name="ChatOllama.chat", start=now, seconds=8)
    first = _span(9, 3, parent=2, start=now, seconds=2, output_tokens=40)
    second = _span(9, 4, parent=2, start=now + dt.timedelta(seconds=3), seconds=2, output_tokens=60)
    tool = _span(9, 5, parent=1, name="execute_tool search", start=now,
                 attributes={"gen_ai.operation.name": "execute_tool"})  # fmt: skip
    _write(db, [second], [agent, tool], [first], [framework])
    assert _efficiency(db) == {"llama3.2": (2, 20, 100)}
    assert [w for _, w in _wrappers(db)] == [True, True, False, False, False]
    _assert_rollups_equal_rebuild(db)


def test_a_load_under_a_call_does_not_make_it_a_wrapper(db: str, now: dt.datetime) -> None:
    call = _span(3, 1, start=now)
    load = _span(3, 2, parent=1, name="load_model llama3.2", start=now, seconds=1,
                 attributes={"gen_ai.operation.name": "load_model", "gen_ai.request.model": "llama3.2"})  # fmt: skip
    _write(db, [load], [call])
    assert query(db, "SELECT calls, loads FROM tokentrace.efficiency('1 hour')") == [(1, 1)]
    assert [w for _, w in _wrappers(db)] == [False, False]


def test_retried_and_duplicated_batches_change_nothing(db: str, now: dt.datetime) -> None:
    parent, child = _pair(now)
    _write(db, [parent], [child], [parent], [child, parent], [parent, child])
    assert _efficiency(db) == {"llama3.2": (1, 10, 100)}
    assert query(db, "SELECT count(*) FROM tokentrace.spans") == [(2,)]
    _assert_rollups_equal_rebuild(db)


def test_a_rolled_back_batch_leaves_no_link(partitions: str, now: dt.datetime) -> None:
    db = partitions
    parent, child = _pair(now)
    with psycopg.connect(db) as conn:
        _insert(conn, [child])
        conn.rollback()
    _write(db, [parent])
    assert _efficiency(db) == {"llama3.2": (1, 10, 100)}
    assert _wrappers(db) == [((1).to_bytes(8, "big"), False)]


def _insert(conn: psycopg.Connection[Any], spans: Sequence[SpanData]) -> None:
    """``spans`` inserted in one statement of ``conn``'s open transaction (no commit)."""
    rows = []
    for span in spans:
        values = list(build_row(span).values)
        values[-2:] = [Jsonb(values[-2]), Jsonb(values[-1])]
        rows.append(values)
    placeholders = ", ".join("(" + ", ".join(["%s"] * len(COLUMNS)) + ")" for _ in rows)
    conn.execute(
        f"INSERT INTO tokentrace.spans ({', '.join(COLUMNS)}) VALUES {placeholders}",
        [v for row in rows for v in row],
    )


@pytest.fixture
def partitions(db: str, now: dt.datetime) -> str:
    with psycopg.connect(db) as conn:
        conn.execute("SELECT tokentrace.ensure_partitions(ARRAY[%s::date])", (now.date(),))
    return db


@pytest.mark.parametrize("first", ["parent", "child"])
def test_concurrent_writers_of_a_pair_count_it_once(partitions: str, now: dt.datetime, first: str) -> None:
    """Two transactions in flight at once, each storing one side of the pair: the
    second waits on the link row, then sees the first's commit."""
    db = partitions
    parent, child = _pair(now)
    a, b = (parent, child) if first == "parent" else (child, parent)
    with psycopg.connect(db) as first_conn, psycopg.connect(db) as second_conn:
        _insert(first_conn, [a])
        done = threading.Event()
        errors: list[BaseException] = []

        def second() -> None:
            try:
                _insert(second_conn, [b])
                second_conn.commit()
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(1.0), "the second writer should wait for the first one's link row"
        first_conn.commit()
        thread.join(30)
    assert not errors, errors
    assert _efficiency(db) == {"llama3.2": (1, 10, 100)}
    _assert_rollups_equal_rebuild(db)


def test_crossing_pairs_from_two_writers_do_not_deadlock(partitions: str, now: dt.datetime) -> None:
    db = partitions
    p1 = _span(11, 1, name="wrapper", start=now)
    c1 = _span(11, 2, parent=1, start=now, output_tokens=30)
    p2 = _span(12, 1, name="wrapper", start=now)
    c2 = _span(12, 2, parent=1, start=now, output_tokens=50)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(spans: list[SpanData]) -> None:
        try:
            with psycopg.connect(db) as conn:
                barrier.wait(10)
                _insert(conn, spans)
                conn.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=([p1, c2],)),
               threading.Thread(target=write, args=([p2, c1],))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert _efficiency(db) == {"llama3.2": (2, 20, 80)}
    _assert_rollups_equal_rebuild(db)


# --- batches whose link rows meet earlier ones (0120's fallback to the upsert) -------------
# A statement's link rows go in with a plain INSERT; when one of them exists already the
# INSERT is rolled back and the statement upserts all its rows. These batches all take
# that path, each mixing a row that exists with rows that do not.
def test_siblings_over_several_batches_each_count(db: str, now: dt.datetime) -> None:
    """Children of one agent span (no model) in three batches, the agent last: every
    batch after the first names a parent row that exists."""
    agent = _span(21, 1, name="invoke_agent", start=now, seconds=9,
                  attributes={"gen_ai.operation.name": "invoke_agent"})  # fmt: skip
    children = [_span(21, 2 + i, parent=1, start=now + dt.timedelta(seconds=i), output_tokens=10 * (i + 1))
                for i in range(3)]  # fmt: skip
    _write(db, [children[0]], [children[1], _span(22, 1, start=now)], [children[2]], [agent])
    assert _efficiency(db) == {"llama3.2": (4, 40, 160)}
    assert not any(w for _, w in _wrappers(db))
    _assert_rollups_equal_rebuild(db)


def test_a_call_parent_after_children_in_several_batches_is_one_wrapper(
    db: str, now: dt.datetime
) -> None:
    parent = _span(23, 1, name="ChatOllama.chat", model="ChatOllama", start=now, seconds=9)
    first = _span(23, 2, parent=1, start=now, output_tokens=30)
    second = _span(23, 3, parent=1, start=now + dt.timedelta(seconds=3), output_tokens=50)
    # The second batch also holds a pair of its own and an unrelated call: the
    # fallback upsert finds the in-batch wrapper as the plain INSERT would have.
    own_pair = [_span(24, 1, name="wrapper", start=now), _span(24, 2, parent=1, start=now, output_tokens=7)]
    _write(db, [first], [second, *own_pair, _span(25, 1, start=now, output_tokens=1)], [parent])
    assert _efficiency(db) == {"llama3.2": (4, 40, 88)}
    assert query(db, "SELECT trace_id, span_id FROM tokentrace.spans WHERE wrapper ORDER BY 1") == [
        ((23).to_bytes(16, "big"), (1).to_bytes(8, "big")),
        ((24).to_bytes(16, "big"), (1).to_bytes(8, "big")),
    ]
    _assert_rollups_equal_rebuild(db)


def test_a_batch_resent_with_a_new_span_counts_only_the_new_one(db: str, now: dt.datetime) -> None:
    """A retried batch that gained a span: the stored spans are skipped (staging), the
    new child's parent row exists (its sibling's), and the parent is subtracted once."""
    parent, child = _pair(now)
    sibling = _span(7, 3, parent=1, start=now + dt.timedelta(seconds=1), output_tokens=40)
    _write(db, [parent, child], [parent, child, sibling], [parent, child, sibling])
    assert _efficiency(db) == {"llama3.2": (2, 20, 140)}
    assert [w for _, w in _wrappers(db)] == [True, False, False]
    _assert_rollups_equal_rebuild(db)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_concurrent_siblings_wait_then_count_once_each(
    partitions: str, now: dt.datetime, outcome: str
) -> None:
    """Two writers in flight with children of one parent stored earlier: the second's
    plain INSERT waits on the first's row of the parent; after the first commits it
    falls back to the upsert, after a rollback its INSERT goes through."""
    db = partitions
    parent = _span(26, 1, name="wrapper", start=now, seconds=9)
    a = _span(26, 2, parent=1, start=now, output_tokens=30)
    b = _span(26, 3, parent=1, start=now + dt.timedelta(seconds=1), output_tokens=50)
    _write(db, [parent])
    with psycopg.connect(db) as first_conn, psycopg.connect(db) as second_conn:
        _insert(first_conn, [a])
        done = threading.Event()
        errors: list[BaseException] = []

        def second() -> None:
            try:
                _insert(second_conn, [b])
                second_conn.commit()
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(1.0), "the second writer should wait for the first one's link row"
        if outcome == "commit":
            first_conn.commit()
        else:
            first_conn.rollback()
        thread.join(30)
    assert not errors, errors
    expected = (2, 20, 80) if outcome == "commit" else (1, 10, 50)
    assert _efficiency(db) == {"llama3.2": expected}
    assert query(db, "SELECT wrapper FROM tokentrace.spans WHERE span_id = %s", ((1).to_bytes(8, "big"),)) == [
        (True,)
    ]
    _assert_rollups_equal_rebuild(db)


def test_many_writers_of_overlapping_traces_count_each_call_once(partitions: str, now: dt.datetime) -> None:
    """Four writers at once, each with one child of each of eight parents (half stored
    before, half after), in different orders: no deadlock, every call once."""
    db = partitions
    before = [_span(40 + t, 1, name="wrapper", start=now, seconds=9) for t in range(4)]
    after = [_span(40 + t, 1, name="wrapper", start=now, seconds=9) for t in range(4, 8)]
    _write(db, before)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        spans = [_span(40 + t, 2 + w, parent=1, start=now + dt.timedelta(seconds=w), output_tokens=1 + w)
                 for t in range(8)]  # fmt: skip
        try:
            with psycopg.connect(db) as conn:
                barrier.wait(10)
                _insert(conn, spans if w % 2 else spans[::-1])
                conn.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    _write(db, after)
    assert _efficiency(db) == {"llama3.2": (32, 320, 8 * (1 + 2 + 3 + 4))}
    assert query(db, "SELECT count(*) FROM tokentrace.spans WHERE wrapper") == [(8,)]
    _assert_rollups_equal_rebuild(db)


def test_a_call_crossing_midnight_is_found_by_a_child_of_the_next_day(db: str) -> None:
    midnight = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    parent = _span(5, 1, name="agent", start=midnight - dt.timedelta(minutes=2), seconds=600)
    child = _span(5, 2, parent=1, start=midnight + dt.timedelta(minutes=1), output_tokens=25)
    _write(db, [parent], [child])
    assert _efficiency(db, hours=48) == {"llama3.2": (1, 10, 25)}
    _assert_rollups_equal_rebuild(db)


def test_prune_drops_the_link_partitions_of_removed_days(db: str) -> None:
    old = dt.datetime.now(UTC) - dt.timedelta(days=90)
    _write(db, [_span(6, 1, start=old)])
    day = old.strftime("%Y%m%d")
    links = "SELECT relname FROM pg_class WHERE relname LIKE 'call_links_%%' ORDER BY 1"
    assert f"call_links_{day}" in [r for (r,) in query(db, links)]
    query(db, "SELECT * FROM tokentrace.prune('60 days')")
    assert f"call_links_{day}" not in [r for (r,) in query(db, links)]


# --- rollups against a rebuild ----------------------------------------------------------
_ROLLUPS = """
SELECT grain, bucket, model, operation, spans, errors, input_tokens, output_tokens,
       timed_calls, timed_output_tokens, decode_output_tokens, load_ms_n, first_start,
       last_start, mpt_packed, prefill_input_tokens,
       coalesce(timed_inference_ms, 0), coalesce(decode_ms_tokens, 0), coalesce(load_ms_sum, 0),
       coalesce(prefill_ms_tokens, 0), inference_ms_total, load_ms_total
FROM tokentrace.span_rollups ORDER BY grain, bucket, model, operation
"""


def _assert_rollups_equal_rebuild(dsn: str) -> None:
    """The rollups kept at write time are the rollups a rebuild from raw spans makes
    (floats to 1e-9: a sum less a value is not always bit-for-bit the sum without it)."""
    kept = query(dsn, _ROLLUPS)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "SELECT tokentrace.rebuild_rollups(min(start_time), max(start_time) + interval '1 ms')"
            " FROM tokentrace.spans"
        )
        rebuilt = conn.execute(_ROLLUPS).fetchall()
        conn.rollback()
    assert len(kept) == len(rebuilt)
    for k, r in zip(kept, rebuilt):
        assert k[:16] == r[:16]
        for a, b in zip(k[16:], r[16:]):
            assert a == (b if b is None else pytest.approx(b, rel=1e-9, abs=1e-9)), (k, r)


