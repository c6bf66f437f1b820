"""Issue 19: what the latency sums (migration 0130) cost ingest. A/B, alternating.

Two databases on one embedded server: ``tt_before`` migrated by ``--baseline-src``'s
migrations (say, main's: ``git archive main src | tar -x -C /tmp/before``), ``tt_after``
by this checkout's. The same 512-span batches (8 models, tokens, server load times, 1 in
40 cold, a keep-alive) are written to both by this checkout's ``SpanWriter``, in
alternating order, one transaction each; the first batch warms up. Prints the median
write time per batch for each and the ratio after / before.

Usage::

    python bench/bench_ingest_ab.py --baseline-src /tmp/before/src [--batches 41] [--data-dir DIR]
"""
import argparse, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import psycopg
from psycopg.conninfo import make_conninfo
from tokentrace.store.embedded import embedded_dsn
from tokentrace.store.migrate import migrate
from tokentrace.store.rows import SpanData, build_row
from tokentrace.store.writer import SpanWriter

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--baseline-src", required=True, metavar="DIR")
parser.add_argument("--batches", type=int, default=41)
parser.add_argument("--data-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="tt-ingest-ab-")))
args = parser.parse_args()
base = embedded_dsn(args.data_dir / "pg")
urls = {}
with psycopg.connect(base, autocommit=True) as c:
    for name in ("tt_before", "tt_after"):
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"); c.execute(f"CREATE DATABASE {name}")
        urls[name] = make_conninfo(base, dbname=name)
env = {**os.environ, "PYTHONPATH": args.baseline_src}
subprocess.run([sys.executable, "-m", "tokentrace", "migrate", "--dsn", urls["tt_before"]], env=env, check=True)
migrate(urls["tt_after"])
now = time.time_ns()
def batch(k):
    out = []
    for i in range(512):
        start = now - (k * 512 + i) * 50_000_000
        out.append(build_row(SpanData(trace_id=(k * 1000 + i + 1).to_bytes(16, "big"), span_id=(1).to_bytes(8, "big"),
            parent_span_id=None, name="chat m", kind="CLIENT", start_ns=start, end_ns=start + 900_000_000, status="OK",
            attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": f"m{i % 8}",
                        "gen_ai.usage.input_tokens": 100 + i, "gen_ai.usage.output_tokens": 20 + i % 50,
                        "tokentrace.server.load_duration_ns": 2_000_000 if i % 40 else 900_000_000,
                        "tokentrace.request.keep_alive_s": 300.0})))
    return out
writers = {n: SpanWriter(u) for n, u in urls.items()}
times = {n: [] for n in urls}
for k in range(args.batches):
    rows = batch(k)
    order = list(urls) if k % 2 == 0 else list(reversed(list(urls)))
    for n in order:
        t = time.perf_counter(); r = writers[n].write(rows); dt_ = time.perf_counter() - t
        assert not r.rejected
        if k: times[n].append(dt_)  # the first batch warms up
for n, ts in times.items():
    print(f"{n}: median {statistics.median(ts)*1000:.1f} ms per 512 spans  ({512/statistics.median(ts):,.0f} spans/s), n={len(ts)}")
print(f"ratio after/before: {statistics.median(times['tt_after'])/statistics.median(times['tt_before']):.3f}")
