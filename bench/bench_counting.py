"""Issue 18 (every call counted once): what the counting rules cost the reports, and the upgrade.

Loads ``--spans`` synthetic spans over 60 days (``bench_reports.py``'s generator) into a
database ``before`` with the code of ``--baseline-src`` (its migrations, its writer and
rollup trigger), copies it (``CREATE DATABASE … TEMPLATE``) to ``after`` and migrates the
copy with this checkout (timed: the upgrade a user pays). Both then hold the same
spans. In each of ``--runs`` rounds every report runs once on ``before`` and once on
``after``, alternating, each on a warm connection of its own; the table prints the
medians and the ratio after / before. The reports' figures are compared too: the
synthetic spans name their operations and have no parents, so both must agree.

Committed spans/s through the receiver, before and after, in the same rounds:
``bench_receiver.py --baseline-src DIR`` (the baseline runs on a database its own
migrations made).

Usage::

    git archive HEAD src | tar -x -C /tmp/before        # the code before the change
    python bench/bench_counting.py --baseline-src /tmp/before/src
    python bench/bench_counting.py --baseline-src /tmp/before/src --spans 100000 --runs 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_reports as B
import psycopg

REPORTS = {
    "efficiency_24h": "SELECT * FROM tokentrace.efficiency_24h",
    "efficiency 7 days": "SELECT * FROM tokentrace.efficiency('7 days')",
    "stats_60d": "SELECT * FROM tokentrace.stats_60d",
    "model_trends_60d": "SELECT * FROM tokentrace.model_trends_60d",
    "efficiency_change": "SELECT * FROM tokentrace.efficiency_change",
    "series 24 h / 1 h (dashboard)": (
        "SELECT * FROM tokentrace.efficiency_series_range("
        "date_trunc('hour', now()) - interval '23 hours', 'infinity', '1 hour')"
    ),
    "series 7 d / 1 d": (
        "SELECT * FROM tokentrace.efficiency_series_range("
        "date_trunc('day', now()) - interval '6 days', 'infinity', '1 day')"
    ),
}
_LOAD = (
    "import sys, datetime as dt; sys.path.insert(0, sys.argv[3]); import bench_reports as B; "
    "start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=B.DAYS); "
    "print(B.load(sys.argv[1], int(sys.argv[2]), start, seq=0))"
)
_MIGRATE = "import sys; from tokentrace.store.migrate import migrate; print(migrate(sys.argv[1]))"


def _with_src(src: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=src)


def _database(dsn: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


def prepare(dsn: str, spans: int, baseline_src: str) -> tuple[str, str, float, float]:
    """The two databases, the load's and the upgrade's seconds."""
    before = _database(dsn, "tt_count_before")
    bench_dir = str(Path(__file__).parent)
    subprocess.run([sys.executable, "-c", _MIGRATE, before], env=_with_src(baseline_src), check=True,
                   capture_output=True)  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _LOAD, before, str(spans), bench_dir],
        env=_with_src(baseline_src), check=True, capture_output=True, text=True,
    )  # fmt: skip
    load_s = float(out.stdout.strip().splitlines()[-1])
    after = _database(dsn, "tt_count_after", template="tt_count_before")
    from tokentrace.store.migrate import migrate

    started = time.perf_counter()
    applied = migrate(after)
    upgrade_s = time.perf_counter() - started
    print(f"upgrade applied {applied} in {upgrade_s:.1f} s", flush=True)
    with psycopg.connect(after, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) tokentrace.spans")
        conn.execute("VACUUM (ANALYZE) tokentrace.span_rollups")
    return before, after, load_s, upgrade_s


def _rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def time_both(before: str, after: str, runs: int) -> dict[str, dict[str, float]]:
    times: dict[str, dict[str, list[float]]] = {n: {"before": [], "after": []} for n in REPORTS}
    with psycopg.connect(before, autocommit=True) as b, psycopg.connect(after, autocommit=True) as a:
        for name, sql in REPORTS.items():  # warm-up, and the figures compared
            old, new = _rows(b, sql), _rows(a, sql)
            if not _same(old, new):
                print(f"warning: {name} differs before/after:\n  {old[:3]}\n  {new[:3]}")
        for r in range(runs):
            for name, sql in REPORTS.items():
                pairs = (("before", b), ("after", a)) if r % 2 == 0 else (("after", a), ("before", b))
                for label, conn in pairs:
                    started = time.perf_counter()
                    _rows(conn, sql)
                    times[name][label].append((time.perf_counter() - started) * 1000)
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def _same(old: Sequence[tuple[Any, ...]], new: Sequence[tuple[Any, ...]]) -> bool:
    if len(old) != len(new):
        return False
    for x, y in zip(old, new):
        for u, v in zip(x, y):
            if isinstance(u, float) and isinstance(v, float):
                if abs(u - v) > 1e-9 * max(abs(u), abs(v), 1.0):
                    return False
            elif u != v and not isinstance(u, dt.datetime):  # now()-relative columns
                return False
    return True


def render(results: dict[str, dict[str, float]]) -> str:
    lines = ["| report | before (ms) | after (ms) | after / before |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| `{name}` | {r['before']:.2f} | {r['after']:.2f} | {r['after'] / r['before']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline-src", required=True, metavar="DIR",
                        help="src/ of the code before the change (git archive … src)")  # fmt: skip
    parser.add_argument("--spans", type=int, default=1_000_000, help="spans to load (default 1 M)")
    parser.add_argument("--runs", type=int, default=21, help="rounds (median; default 21)")
    parser.add_argument("--dsn", help="a PostgreSQL server to use (default: a fresh embedded one)")
    args = parser.parse_args(argv)
    with B._server(args.dsn) as dsn:
        print(B._machine(dsn), flush=True)
        before, after, load_s, upgrade_s = prepare(dsn, args.spans, args.baseline_src)
        results = time_both(before, after, args.runs)
    print(f"\n{args.spans:,} spans (loaded in {load_s:.0f} s by the baseline; upgrade {upgrade_s:.1f} s), "
          f"median of {args.runs} alternating rounds ({time.strftime('%Y-%m-%d %H:%M %Z')})\n")  # fmt: skip
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
