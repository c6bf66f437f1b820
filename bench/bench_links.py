"""What wrapper detection costs the writer, per workload and per rollup trigger (issue 18).

The same rows are written through :class:`SpanWriter` (binary ``COPY``, one transaction
per batch, one connection) under each version of ``tokentrace.rollup_new_spans()``,
swapped in with ``CREATE OR REPLACE`` on one database, variants alternated in every
round, tables emptied (and a ``CHECKPOINT``) before each phase:

before
    0080's trigger: rollups only, no ``call_links`` rows (what issue 18 compares to);
0100
    0100's: every link row upserted (``INSERT … ON CONFLICT DO UPDATE``);
0120
    0120's: a plain ``INSERT`` of the link rows, 0100's upsert only for a batch one of
    whose rows exists already.

The figure is PostgreSQL's CPU time per span (the postmaster and its children, from
``psutil``), less sensitive to a shared machine than spans/s, which is printed too.
Workloads, batches of 1024 spans:

independent
    every span a call with a parent outside its batch, never stored (bench_receiver's
    workload): two new link rows per span, no batch meets an earlier one;
spread
    1024 parents (no model, never stored), batch *b* holds child *b* of each: from the
    second batch on, every parent row exists (the worst case for 0120: every batch
    falls back);
straddle
    traces of an agent span (no model) and three calls, ~300 in flight, in end order:
    traces at a batch's edges have children on both sides;
pairs
    a call (a framework span) and its call child in the same batch: half the spans are
    wrappers, marked and subtracted within their statement.

Run::

    python bench/bench_links.py                      # 3 rounds of every workload
    python bench/bench_links.py --rounds 5 --workloads independent,spread
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import psutil
import psycopg

from tokentrace.store.embedded import embedded_dsn, stop_embedded
from tokentrace.store.migrate import migrate
from tokentrace.store.rows import SpanData, WireRow, build_row, wire_rows
from tokentrace.store.writer import SpanWriter

BATCH = 1024
VARIANTS = {
    "before": "0080_series_from_rollups.sql",
    "0100": "0100_calls_count_once.sql",
    "0120": "0120_link_insert_fast.sql",
}
_HEAD = "CREATE OR REPLACE FUNCTION tokentrace.rollup_new_spans()"


def trigger_sql(migration: str) -> str:
    """The ``rollup_new_spans()`` definition of one migration file."""
    text = resources.files("tokentrace").joinpath("sql").joinpath(migration).read_text()
    start = text.index(_HEAD)
    return text[start : text.index("\n$$;\n", start) + 5]


# --- workloads --------------------------------------------------------------------
NOW = time.time_ns() - 30 * 60 * 10**9


def _span(
    rnd: random.Random,
    trace: bytes,
    span: bytes,
    parent: bytes | None,
    start: int,
    seconds: float,
    model: str | None = "llama3.2",
) -> SpanData:
    attrs: dict[str, object] = (
        {
            "gen_ai.request.model": model,
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": rnd.randrange(10, 4000),
            "gen_ai.usage.output_tokens": rnd.randrange(1, 1000),
        }
        if model
        else {"gen_ai.operation.name": "invoke_agent"}
    )
    return SpanData(
        trace_id=trace, span_id=span, parent_span_id=parent, name="chat", kind="CLIENT",
        start_ns=start, end_ns=start + int(seconds * 1e9), attributes=attrs, status="OK",
    )  # fmt: skip


def independent(n: int, rnd: random.Random) -> list[SpanData]:
    return [
        _span(rnd, rnd.randbytes(16), rnd.randbytes(8), rnd.randbytes(8), NOW + rnd.randrange(10**12), 1.0)
        for _ in range(n)
    ]  # fmt: skip


def spread(n: int, rnd: random.Random) -> list[SpanData]:
    parents = [(rnd.randbytes(16), rnd.randbytes(8)) for _ in range(BATCH)]
    return [
        _span(rnd, trace, rnd.randbytes(8), parent, NOW + b * 10**9, 1.0)
        for b in range(n // BATCH)
        for trace, parent in parents
    ]


def straddle(n: int, rnd: random.Random) -> list[SpanData]:
    ended: list[tuple[int, SpanData]] = []
    t = 0
    while len(ended) < n:
        trace, root, start = rnd.randbytes(16), rnd.randbytes(8), NOW + t * 10**7
        for k in range(3):
            call = _span(rnd, trace, rnd.randbytes(8), root, start + k * 10**9, 1.0)
            ended.append((start + (k + 1) * 10**9, call))
        ended.append((start + 35 * 10**8, _span(rnd, trace, root, None, start, 3.5, model=None)))
        t += 1
    ended.sort(key=lambda e: e[0])
    return [s for _, s in ended[:n]]


def pairs(n: int, rnd: random.Random) -> list[SpanData]:
    out = []
    for _ in range(n // 2):
        trace, parent, start = rnd.randbytes(16), rnd.randbytes(8), NOW + rnd.randrange(10**12)
        out.append(_span(rnd, trace, rnd.randbytes(8), parent, start, 1.0))
        out.append(_span(rnd, trace, parent, None, start, 1.1, model="ChatOllama"))
    return out


WORKLOADS: dict[str, Callable[[int, random.Random], list[SpanData]]] = {
    "independent": independent, "spread": spread, "straddle": straddle, "pairs": pairs,
}  # fmt: skip


# --- measuring ----------------------------------------------------------------------
def postgres_cpu(postmaster: psutil.Process) -> float:
    total = 0.0
    for proc in [postmaster, *postmaster.children()]:
        try:
            cpu = proc.cpu_times()
        except psutil.Error:
            continue
        total += cpu.user + cpu.system
    return total


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "DO $$ DECLARE p record; BEGIN"
            " FOR p IN SELECT partition FROM tokentrace.span_partitions LOOP"
            " EXECUTE format('DROP TABLE %s', p.partition); END LOOP;"
            " FOR p IN SELECT inhrelid::regclass AS partition FROM pg_inherits"
            " WHERE inhparent = 'tokentrace.call_links'::regclass LOOP"
            " EXECUTE format('DROP TABLE %s', p.partition); END LOOP; END $$"
        )
        conn.execute("TRUNCATE tokentrace.span_rollups")
        conn.execute("CHECKPOINT")


def phase(dsn: str, postmaster: psutil.Process, trigger: str, rows: list[WireRow]) -> tuple[float, float, int]:
    """(PostgreSQL CPU µs/span, spans/s, calls counted) of writing ``rows`` batch by batch."""
    reset(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(trigger)
    writer = SpanWriter(dsn, max_connections=1)
    try:
        writer.write_wire(rows[:BATCH])  # partitions made, connection warm: not timed
        timed = len(rows) - BATCH
        cpu0, t0 = postgres_cpu(postmaster), time.perf_counter()
        for b in range(BATCH, len(rows), BATCH):
            writer.write_wire(rows[b : b + BATCH])
        elapsed, cpu = time.perf_counter() - t0, postgres_cpu(postmaster) - cpu0
    finally:
        writer.close()
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT sum(spans) FROM tokentrace.span_rollups WHERE grain = '24:00:00'"
        ).fetchone()
    return cpu * 1e6 / timed, timed / elapsed, int(row[0]) if row and row[0] is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median; default 3)")
    parser.add_argument("--batches", type=int, default=40, help="batches of 1024 per phase")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    workloads = args.workloads.split(",")
    variants = {v: trigger_sql(VARIANTS[v]) for v in args.variants.split(",")}
    with tempfile.TemporaryDirectory(prefix="tt-bench-links-") as tmp:
        dsn = embedded_dsn(Path(tmp) / "pg")
        try:
            migrate(dsn)
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
            assert row
            postmaster = psutil.Process(int((Path(row[0]) / "postmaster.pid").read_text().split()[0]))
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for r in range(args.rounds):
                for w in workloads:
                    rows = wire_rows([build_row(s) for s in WORKLOADS[w](args.batches * BATCH, random.Random(r))])
                    order = list(variants) if r % 2 == 0 else list(variants)[::-1]
                    for v in order:
                        cpu, rate, counted = phase(dsn, postmaster, variants[v], rows)
                        results.setdefault((w, v), []).append((cpu, rate))
                        print(f"round {r + 1} {w:<12} {v:<7} {cpu:6.1f} µs/span  {rate:8,.0f} spans/s"
                              f"  calls counted {counted:,}", flush=True)  # fmt: skip
        finally:
            stop_embedded()
    print(f"\nPostgreSQL CPU µs/span, median of {args.rounds} (spans/s median)")
    print(f"{'workload':<12} " + " ".join(f"{v:>20}" for v in variants))
    for w in workloads:
        cells = []
        for v in variants:
            runs = results[(w, v)]
            cells.append(f"{statistics.median(c for c, _ in runs):6.1f} ({statistics.median(s for _, s in runs):7,.0f}/s)")
        print(f"{w:<12} " + " ".join(f"{c:>20}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
