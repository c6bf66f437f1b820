"""One PostgreSQL against a Citus cluster (a coordinator and two workers), in one run.

Both are started here from pgserver's binaries (the cluster by
``tests/citus_cluster.py``, so Citus must be installed into pgserver:
``../shared/citus/install.sh <python>``), on this machine, and migrated by
``tokentrace migrate``.

Phases, alternated between the two targets, ``--rounds`` times:

ingest
    one fresh ``tokentrace serve`` per target, ``--inflight`` sender threads pushing
    ``--spans`` spans in OTLP/gRPC requests of ``--batch`` (bench_scaleout.py's
    workload and its phase); spans/s = spans / (last acknowledgement − first send),
    each acknowledged after its commit. CPU seconds of the receiver, of every
    PostgreSQL process of the target (all three nodes for the cluster) and of the
    machine as a whole are read around the phase.

Then, once per target, a store of ``--store-spans`` spans spread over the last 48
hours is written through ``SpanWriter`` (4 threads, batches of 8192; its time is the
COPY-path figure), and every report is timed on it: the median of ``--repeat`` calls.

Usage::

    python bench/bench_citus.py --quick             # smoke run
    python bench/bench_citus.py                     # 100,000 spans ×3 rounds, 1 M store
    python bench/bench_citus.py --store-spans 10000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_scaleout  # noqa: E402  (beside this file)

from tests.citus_cluster import CitusCluster, citus_available, HOW_TO_GET  # noqa: E402

_POSTGRES_CPU = bench_scaleout.postgres_cpu  # one server's processes (ingest() repoints the module's)
REPORTS: dict[str, str] = {
    "efficiency()": "SELECT * FROM tokentrace.efficiency()",
    "efficiency('1 hour', model)": "SELECT * FROM tokentrace.efficiency('1 hour', 'llama3.1:8b')",
    "efficiency_series()": "SELECT * FROM tokentrace.efficiency_series()",
    "efficiency_series('2 days','7 min') raw": "SELECT * FROM tokentrace.efficiency_series('2 days', '7 minutes')",
    "stats_60d": "SELECT * FROM tokentrace.stats_60d",
    "model_trends_60d": "SELECT * FROM tokentrace.model_trends_60d",
    "efficiency_change": "SELECT * FROM tokentrace.efficiency_change",
    "footprint": "SELECT * FROM tokentrace.footprint",
    "footprint_summary()": "SELECT * FROM tokentrace.footprint_summary()",
}


def reset(dsn: str) -> None:
    """Empty spans, links and rollups (bench_scaleout's reset leaves call_links)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE tokentrace.spans, tokentrace.call_links, tokentrace.span_rollups")
        conn.execute("CHECKPOINT")


class Target:
    def __init__(self, name: str, dsn: str, data_dirs: Sequence[Path]) -> None:
        self.name, self.dsn, self.data_dirs = name, dsn, list(data_dirs)

    def postmasters(self) -> list[psutil.Process]:
        out = []
        for d in self.data_dirs:
            pid = int((d / "postmaster.pid").read_text().splitlines()[0])
            out.append(psutil.Process(pid))
        return out

    def cpu(self) -> dict[int, float]:
        seconds: dict[int, float] = {}
        for pm in self.postmasters():
            seconds.update(_POSTGRES_CPU(pm))
        return seconds

    def cpu_by_node(self) -> list[dict[int, float]]:
        return [_POSTGRES_CPU(pm) for pm in self.postmasters()]


def ingest(target: Target, requests: list[bytes], args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    reset(target.dsn)
    # bench_scaleout's phase reads the CPU of its DSN's server, from inside the phase
    # (while the receiver's backends live): pointed at every node of the target here.
    bench_scaleout.postmaster_of = lambda dsn: target.postmasters()[0]
    bench_scaleout.postgres_cpu = lambda postmaster: target.cpu()
    result = bench_scaleout.phase_receivers(
        target.dsn, requests, args.spans, 1, args.inflight, log_dir, False)
    result["target"] = target.name
    return result


def store_rows(count: int, seed: int = 11) -> list[list[Any]]:
    """``count`` spans over the last 48 h, as built rows in batches of 8192."""
    from tokentrace.store.rows import SpanData, build_row

    rng = random.Random(seed)
    run = os.urandom(6)
    now_ns = time.time_ns()
    batches: list[list[Any]] = []
    batch: list[Any] = []
    for i in range(count):
        model, provider = bench_scaleout.MODELS[i % len(bench_scaleout.MODELS)]
        out = rng.randrange(20, 800)
        start = now_ns - rng.randrange(60, 48 * 3600) * 1_000_000_000
        batch.append(build_row(SpanData(
            trace_id=run + (i // 4).to_bytes(10, "big"), span_id=(i + 1).to_bytes(8, "big"),
            parent_span_id=None, name=f"chat {model}", kind="CLIENT", start_ns=start,
            end_ns=start + out * rng.randrange(8_000_000, 40_000_000),
            attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                        "gen_ai.request.model": model, "gen_ai.usage.input_tokens": rng.randrange(50, 2000),
                        "gen_ai.usage.output_tokens": out},
            status="OK")))
        if len(batch) == 8192:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


def load_store(target: Target, batches: list[list[Any]]) -> dict[str, Any]:
    from tokentrace.store.writer import SpanWriter

    reset(target.dsn)
    writer = SpanWriter(target.dsn, max_connections=4)
    spans = sum(len(b) for b in batches)
    writer.write(batches[0][:1])  # connections, staging tables
    reset(target.dsn)
    before, nodes_before = target.cpu(), target.cpu_by_node()
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(writer.write, batches))
    elapsed = time.perf_counter() - started
    used = bench_scaleout.postgres_cpu_delta(before, target.cpu())
    by_node = [bench_scaleout.postgres_cpu_delta(b, a) / spans * 1e6
               for b, a in zip(nodes_before, target.cpu_by_node())]
    writer.close()
    assert sum(r.inserted for r in results) == spans
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("ANALYZE tokentrace.spans")
    return {"target": target.name, "spans": spans, "seconds": elapsed, "spans_per_s": spans / elapsed,
            "postgres_cpu_us_per_span": used / spans * 1e6, "cpu_us_per_span_by_node": by_node}


def time_reports(target: Target, repeat: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        for name, query in REPORTS.items():
            conn.execute(query).fetchall()  # warm
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                conn.execute(query).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = statistics.median(times)
    return out


def timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    value = fn()
    print(f"{label}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run (10,000 spans, 1 round, 50,000 store)")
    parser.add_argument("--spans", type=int, help="spans per ingest phase (default 100,000)")
    parser.add_argument("--batch", type=int, default=2048, help="spans per OTLP request (default 2048)")
    parser.add_argument("--inflight", type=int, default=8, help="concurrent requests (default 8)")
    parser.add_argument("--rounds", type=int, help="ingest rounds, alternating targets (default 3)")
    parser.add_argument("--store-spans", type=int, help="spans in the report store (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="calls per report timing (default 5)")
    parser.add_argument("--shards", type=int, default=4, help="citus.shard_count (default 4)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    args.spans = args.spans or (10_000 if args.quick else 100_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.store_spans = args.store_spans or (50_000 if args.quick else 1_000_000)
    if not citus_available():
        print(HOW_TO_GET, file=sys.stderr)
        return 2

    from tokentrace.store.embedded import embedded_dsn, stop_embedded
    from tokentrace.store.migrate import migrate

    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="tokentrace-bench-citus-") as tmp:
        cluster = CitusCluster(Path(tmp) / "citus", workers=2, shard_count=args.shards)
        try:
            single_dsn = embedded_dsn(Path(tmp) / "pgdata")
            cluster.start()
            migrate(single_dsn)
            migrate(cluster.dsn, require_citus=True)
            targets = [
                Target("one node", single_dsn, [Path(tmp) / "pgdata"]),
                Target("citus 1+2", cluster.dsn, [n.data_dir for n in cluster.nodes]),
            ]
            requests = bench_scaleout.make_requests(args.spans, args.batch)
            today = dt.datetime.now(dt.timezone.utc).date()
            for t in targets:
                with psycopg.connect(t.dsn, autocommit=True) as conn:
                    conn.execute("SELECT tokentrace.ensure_partitions(%s::date[])",
                                 ([today - dt.timedelta(days=d) for d in range(3)],))
            ingest_results = []
            for round_no in range(1, args.rounds + 1):
                for t in targets:
                    r = ingest(t, requests, args, Path(tmp))
                    r["round"] = round_no
                    ingest_results.append(r)
                    print(f"round {round_no} {t.name}: {r['spans_per_s']:,.0f} spans/s "
                          f"({r['stored']:,} stored)", file=sys.stderr)
            results["ingest"] = ingest_results
            batches = timed("built store rows", lambda: store_rows(args.store_spans))
            results["store"], results["reports_ms"] = [], {}
            for t in targets:
                loaded = load_store(t, batches)
                print(f"store {t.name}: {loaded['spans_per_s']:,.0f} spans/s", file=sys.stderr)
                results["store"].append(loaded)
                results["reports_ms"][t.name] = time_reports(t, args.repeat)
            with psycopg.connect(cluster.dsn, autocommit=True) as conn:
                row = conn.execute("SELECT citus_version()").fetchone()
                results["citus"] = str(row[0]) if row else "?"
        finally:
            cluster.stop()
            stop_embedded()
    results["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["machine"] = (f"{platform.system()} {platform.machine()}, {psutil.cpu_count()} cores, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict[str, Any]) -> str:
    lines = [f"{results['date']}, {results['machine']}, {results.get('citus', '')}", "",
             "| round | target | spans/s committed | seconds | stored | CPU µs/span: receiver "
             "| all PostgreSQL nodes | machine busy |", "|---|---|---|---|---|---|---|---|"]
    for r in results["ingest"]:
        lines.append(
            f"| {r['round']} | {r['target']} | {r['spans_per_s']:,.0f} | {r['seconds']:.2f} | "
            f"{r['stored']:,} | {r['cpu_us_per_span']['receivers']:.0f} | "
            f"{r['cpu_us_per_span']['postgres']:.0f} | {r['cpu_share']['machine']:.0%} |")
    medians = {}
    for name in ("one node", "citus 1+2"):
        rates = [r["spans_per_s"] for r in results["ingest"] if r["target"] == name]
        medians[name] = statistics.median(rates)
    lines += ["", f"median spans/s: one node {medians['one node']:,.0f}, cluster "
              f"{medians['citus 1+2']:,.0f} (cluster/one node = {medians['citus 1+2'] / medians['one node']:.2f})",
              "", "| store | target | spans/s (SpanWriter, 4 threads) | PostgreSQL CPU µs/span "
              "| by node (coordinator, workers) |", "|---|---|---|---|---|"]
    for s in results["store"]:
        nodes = " / ".join(f"{v:.0f}" for v in s.get("cpu_us_per_span_by_node", []))
        lines.append(f"| {s['spans']:,} | {s['target']} | {s['spans_per_s']:,.0f} | "
                     f"{s['postgres_cpu_us_per_span']:.0f} | {nodes} |")
    names = list(results["reports_ms"])
    lines += ["", "| report (median ms) | " + " | ".join(names) + " | cluster/one node |",
              "|---|" + "---|" * (len(names) + 1)]
    for report_name in REPORTS:
        a, b = (results["reports_ms"][n][report_name] for n in names)
        lines.append(f"| {report_name} | {a:.1f} | {b:.1f} | {b / a:.1f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
