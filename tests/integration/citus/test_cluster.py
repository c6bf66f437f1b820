"""The same spans, through real ``tokentrace serve`` receivers over OTLP/HTTP, into one
PostgreSQL and into a Citus cluster (a coordinator and two workers): every report
gives the same rows, values and types.

The sends include a duplicated batch, a retried batch that overlaps one already
stored, a second receiver (sending concurrently with the first, and a duplicate of the
first's batch), and call/wrapper pairs whose halves arrive in either order and in
different batches, so the rollups' subtraction path runs too.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.citus_cluster import CitusCluster
from tests.integration.receiver.clients import Http, pb_request
from tests.integration.receiver.test_serve_process import ServeProcess

HOUR_S = 3600
MODELS = ("llama3.2", "qwen2.5:7b", "gpt-4o-mini")


@dataclass(frozen=True)
class SpanSpec:
    index: int
    ago_s: int  # start, seconds before the test's reference time
    model: str
    operation: str = "chat"
    duration_ms: int = 1024
    input_tokens: int = 32
    output_tokens: int = 64
    error: bool = False
    parent: int | None = None  # index of the parent span (same trace)
    trace: int | None = None  # trace number (default: the span's own)


def _corpus() -> list[SpanSpec]:
    """Spans over the last 20 days, never within an hour of a report window's edge
    (24 h, 60 d) nor of a bucket edge of efficiency_series' hourly buckets, so the few
    seconds between the two runs move nothing across one."""
    specs: list[SpanSpec] = []
    # Hours ago (each + 30 min: mid-bucket): recent (< 24 h) and baseline (1–20 days).
    hours = [0, 1, 2, 3, 5, 8, 11, 14, 17, 20, 22, 26, 30, 49, 75, 100, 150, 230, 330, 470]
    for i in range(240):
        model = MODELS[i % 3]
        hour = hours[i % len(hours)]
        ago = hour * HOUR_S + 1800 + (i * 7) % 900  # mid-bucket, spread over 15 min
        operation = "load_model" if i % 17 == 0 else ("embeddings" if i % 23 == 0 else "chat")
        specs.append(SpanSpec(
            index=i, ago_s=ago, model=model, operation=operation,
            # powers of two and small integers: every sum and ratio is exact in float8
            duration_ms=256 * (1 + i % 8), input_tokens=16 * (1 + i % 5),
            output_tokens=2 ** (3 + i % 5), error=(i % 19 == 0),
        ))
    # Wrapper pairs: a framework span around a call span, with the same model.
    for n, (parent, child) in enumerate(((240, 241), (242, 243), (244, 245))):
        ago = (2 + n) * HOUR_S + 1800
        trace = 1000 + n
        specs.append(SpanSpec(parent, ago, "llama3.2", duration_ms=2048, output_tokens=128, trace=trace))
        specs.append(SpanSpec(child, ago + 0, "llama3.2", duration_ms=1024, output_tokens=128,
                              parent=parent, trace=trace))
    return specs


def _ids(spec: SpanSpec, salt: int) -> tuple[bytes, bytes]:
    trace = spec.trace if spec.trace is not None else spec.index
    return (salt.to_bytes(8, "big") + trace.to_bytes(8, "big"),
            (salt * 10_000 + spec.index + 1).to_bytes(8, "big"))


def _pb(spec: SpanSpec, salt: int, at_ns: int, by_index: dict[int, SpanSpec]) -> Span:
    trace_id, span_id = _ids(spec, salt)
    start = at_ns - spec.ago_s * 1_000_000_000
    attributes = [
        KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value=spec.operation)),
        KeyValue(key="gen_ai.request.model", value=AnyValue(string_value=spec.model)),
    ]
    if spec.operation != "load_model":
        attributes += [
            KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=spec.input_tokens)),
            KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=spec.output_tokens)),
        ]
    parent_id = b""
    if spec.parent is not None:
        parent_id = _ids(by_index[spec.parent], salt)[1]
    return Span(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent_id,
        name=f"{spec.operation} {spec.model}", kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start, end_time_unix_nano=start + spec.duration_ms * 1_000_000,
        attributes=attributes,
        status=Status(code=Status.STATUS_CODE_ERROR if spec.error else Status.STATUS_CODE_UNSET),
    )


# Which spans each request carries, by receiver. A and B are two `tokentrace serve`.
_WRAPPED = {"p1": 240, "c1": 241, "p2": 242, "c2": 243, "p3": 244, "c3": 245}
_SCHEDULE: list[tuple[str, list[int]]] = [
    ("A", [*range(0, 40), _WRAPPED["p1"]]),  # a wrapper stored before its call
    ("A", [*range(0, 40), _WRAPPED["p1"]]),  # the same batch again (a duplicate)
    ("A", [*range(40, 80), _WRAPPED["c2"]]),  # a call stored before its wrapper
    ("A", [*range(60, 120), _WRAPPED["c1"]]),  # a retry that overlaps the last batch
]
# Sent at the same time: B's new spans, A's new spans, and B re-sending A's first batch.
_CONCURRENT: list[tuple[str, list[int]]] = [
    ("B", [*range(120, 180), _WRAPPED["p2"]]),
    ("A", [*range(180, 240), _WRAPPED["p3"], _WRAPPED["c3"]]),
    ("B", [*range(0, 40), _WRAPPED["p1"]]),
]


def _send(dsn: str, env: dict[str, str], at_ns: int, salt: int, logs: list[str]) -> dict[str, int]:
    specs = {s.index: s for s in _corpus()}

    def body(indexes: Sequence[int]) -> bytes:
        return pb_request([_pb(specs[i], salt, at_ns, specs) for i in indexes], service="cluster-test")

    receivers: dict[str, ServeProcess] = {}
    ports: dict[str, int] = {}
    try:
        for name in ("A", "B"):
            process = ServeProcess(
                ["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0", "--dsn", dsn], env
            )
            receivers[name] = process
            ports[name] = int(process.wait_for(
                r"OTLP/HTTP and reports listening on http://127\.0\.0\.1:(\d+)$", timeout=60).group(1))
        statuses: dict[str, int] = {}
        for n, (name, indexes) in enumerate(_SCHEDULE):
            client = Http(ports[name])
            statuses[f"serial{n}"] = client.post(body(indexes)).status
            client.close()

        def post(key: str, name: str, indexes: list[int]) -> None:
            client = Http(ports[name])
            statuses[key] = client.post(body(indexes)).status
            client.close()

        threads = [threading.Thread(target=post, args=(f"concurrent{n}", name, indexes))
                   for n, (name, indexes) in enumerate(_CONCURRENT)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return statuses
    finally:
        for process in receivers.values():
            process.stop()
            while not process.lines.empty():
                process.log.append(process.lines.get())
            logs.extend(process.log)


# Reports computed from float sums the workers add in another order: equal to the last
# few bits only (every other report is exact).
_SUMMED_FLOATS = {"expected_latency", "rollups_latency_sums"}


def _same_rows(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]], *, exact: bool) -> bool:
    if exact or len(a) != len(b):
        return a == b
    return all(
        len(x) == len(y) and all(
            u == pytest.approx(v, rel=1e-9, abs=1e-9) if isinstance(u, float) and isinstance(v, float)
            else u == v for u, v in zip(x, y))
        for x, y in zip(a, b))


# --- reading the reports -------------------------------------------------------------
@dataclass
class Report:
    columns: list[tuple[str, int]]  # name, type oid
    rows: list[tuple[Any, ...]]


def _report(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Report:
    cur = conn.execute(query, params)
    assert cur.description is not None
    return Report([(c.name, c.type_code) for c in cur.description], cur.fetchall())


def _reports(dsn: str, anchor: dt.datetime) -> dict[str, Report]:
    """Every report, on windows that do not depend on the second the query runs."""
    day = anchor.replace(hour=0, minute=0, second=0, microsecond=0)
    out: dict[str, Report] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        out["efficiency"] = _report(conn, "SELECT * FROM tokentrace.efficiency()")
        out["efficiency_24h"] = _report(conn, "SELECT * FROM tokentrace.efficiency_24h")
        out["efficiency_7d_llama"] = _report(
            conn, "SELECT * FROM tokentrace.efficiency('7 days', 'llama3.2')")
        # efficiency_series: bucket starts follow now(); all else must match
        series = _report(conn, "SELECT * FROM tokentrace.efficiency_series()")
        out["efficiency_series"] = Report(series.columns[1:], [r[1:] for r in series.rows])
        out["efficiency_series_rollups"] = _report(  # aligned: from the rollups
            conn, "SELECT * FROM tokentrace.efficiency_series_range(%s, 'infinity', '1 hour')",
            (day - dt.timedelta(days=21),))
        out["efficiency_series_raw"] = _report(  # not aligned: raw spans, exact percentiles
            conn, "SELECT * FROM tokentrace.efficiency_series_range(%s, %s, '13 minutes')",
            (day - dt.timedelta(days=3, minutes=7), day + dt.timedelta(days=1)))
        out["efficiency_range_days"] = _report(
            conn, "SELECT * FROM tokentrace.efficiency_range(%s, %s)",
            (day - dt.timedelta(days=20), day + dt.timedelta(days=1)))
        out["stats_60d"] = _report(conn, "SELECT * FROM tokentrace.stats_60d")
        out["model_trends_60d"] = _report(conn, "SELECT * FROM tokentrace.model_trends_60d")
        out["efficiency_change"] = _report(conn, "SELECT * FROM tokentrace.efficiency_change")
        out["efficiency_change_fn"] = _report(
            conn, "SELECT * FROM tokentrace.efficiency_change('2 days', '30 days')")
        out["expected_latency"] = _report(  # at a fixed instant: warm/stale follow `at`
            conn, "SELECT * FROM tokentrace.expected_latency(800, 300, NULL, %s)", (anchor,))
        out["rollups_latency_sums"] = _report(  # migration 0130's sums, kept by rollup_staged too
            conn, "SELECT * FROM tokentrace.span_rollups ORDER BY grain, bucket, model, operation")
        out["spans"] = _report(
            conn, "SELECT count(*), count(*) FILTER (WHERE wrapper), sum(output_tokens) FROM tokentrace.spans")
        out["rollups"] = _report(
            conn, "SELECT grain, bucket, model, operation, spans, errors, input_tokens, output_tokens, "
                  "timed_calls, timed_inference_ms, timed_output_tokens, load_ms_n, load_ms_sum, "
                  "first_start, last_start, mpt_packed FROM tokentrace.span_rollups ORDER BY 1, 2, 3, 4")
        out["links"] = _report(
            conn, "SELECT day, span_id, start_time IS NOT NULL, has_child FROM tokentrace.call_links "
                  "ORDER BY 1, 2")
    return out


def _footprint(dsn: str) -> Report:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return _report(conn, "SELECT * FROM tokentrace.footprint ORDER BY relation")


def _shard_bytes(cluster: CitusCluster, pattern: str) -> int:
    """The bytes of the shards, on every worker, of the tables named like ``pattern``."""
    total = 0
    for worker in cluster.workers:
        with psycopg.connect(worker.dsn(), autocommit=True) as conn:
            conn.execute("SET citus.override_table_visibility = off")  # Citus hides shards
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "WHERE c.relname ~ %s AND c.relkind = 'r'", (pattern,)).fetchone()
            total += int(row[0]) if row else 0
    return total


@pytest.fixture
def anchor() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield subprocess_env


def test_the_cluster_reports_what_one_node_reports(
    db: str, cluster_db: str, citus_cluster: CitusCluster, env: dict[str, str], anchor: dt.datetime
) -> None:
    at_ns = int(anchor.timestamp()) * 1_000_000_000
    started = time.monotonic()
    logs: list[str] = []
    single_status = _send(db, env, at_ns, 7, logs)
    cluster_status = _send(cluster_db, env, at_ns, 7, logs)
    assert set(single_status.values()) == {200}, "".join(logs)
    assert set(cluster_status.values()) == {200}, (cluster_status, "".join(logs))

    single, cluster = _reports(db, anchor), _reports(cluster_db, anchor)
    # The counts the schedule implies: 246 distinct spans, 3 of them wrappers.
    assert single["spans"].rows == [(246, 3, single["spans"].rows[0][2])]
    assert single["efficiency"].rows, "the corpus must give the reports something to say"
    assert set(single) == set(cluster)
    for name in single:
        assert cluster[name].columns == single[name].columns, name
        assert _same_rows(cluster[name].rows, single[name].rows, exact=name not in _SUMMED_FLOATS), name
    assert time.monotonic() - started < 120

    # The footprint: the same relations and types; the cluster's sizes are its workers'.
    one, many = _footprint(db), _footprint(cluster_db)
    assert many.columns == one.columns
    assert [r[0] for r in many.rows] == [r[0] for r in one.rows]
    sizes = {r[0]: r[1] for r in many.rows}
    assert sizes["spans"] == _shard_bytes(citus_cluster, r"^spans_\d{8}_\d+$")
    assert sizes["call_links"] == _shard_bytes(citus_cluster, r"^call_links_\d{8}_\d+$")
    assert sizes["span_rollups"] == _shard_bytes(citus_cluster, r"^span_rollups_(5min|hour|day)_\d+$")
    with psycopg.connect(cluster_db, autocommit=True) as conn:
        summary = conn.execute("SELECT total_bytes FROM tokentrace.footprint_summary()").fetchone()
        local = conn.execute(
            "SELECT coalesce(sum(pg_relation_size(p.partition)), 0) FROM tokentrace.span_partitions p"
        ).fetchone()
    assert summary is not None and summary[0] == sum(sizes.values())
    assert local is not None and local[0] == 0  # the coordinator's day tables hold no rows
