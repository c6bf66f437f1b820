"""Row building, before/after in one process: the exporter's span → row, timed for two trees.

A second copy of tokentrace (``--baseline-src``, a ``src`` directory of another
version, e.g. ``git archive main src``) is imported beside this one under another
package name, and both build rows for the same spans in alternating rounds
(which goes first alternates too), so a slow spell of a shared machine lands on
both sides of a round. Measured per round: ``time.thread_time`` µs per span of

``rows``
    what ``PostgresSpanExporter.export()`` does before the database: its batch
    order and its row iterator (span → row → the tuple COPY sends), for spans
    forwarded by ``TokenEfficiencySpanProcessor`` (``processed``) and plain SDK
    spans (``plain``);
``build_row``
    ``build_row`` of the same spans' ``SpanData`` (the receiver's share of the work).

Reported: each side's median, and the median and interquartile range of the
per-round ratios candidate / baseline. Usage::

    mkdir -p /tmp/before && git archive main src | tar -x -C /tmp/before
    python bench/bench_rows.py --baseline-src /tmp/before/src
"""

from __future__ import annotations

import argparse
import gc
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import CollectingProcessor, SpanMaker, make_provider  # noqa: E402

BASE = "tokentrace_baseline"


def load_baseline(src: str) -> ModuleType:
    """The ``tokentrace`` package of ``src``, imported as :data:`BASE`."""
    root = Path(tempfile.mkdtemp(prefix="tt-bench-rows-"))
    shutil.copytree(Path(src) / "tokentrace", root / BASE, ignore=shutil.ignore_patterns("__pycache__"))
    for module in (root / BASE).rglob("*.py"):
        text = module.read_text()
        module.write_text(text.replace("tokentrace.", f"{BASE}.").replace("from tokentrace ", f"from {BASE} "))
    sys.path.insert(0, str(root))
    return importlib.import_module(BASE)


def workloads(package: str, n: int) -> dict[str, Callable[[], float]]:
    """name -> a function that times one round (µs per span) with ``package``."""
    exporter_mod = importlib.import_module(f"{package}.exporter")
    spans_mod = importlib.import_module(f"{package}.exporter.spans")
    processor_mod = importlib.import_module(f"{package}.processor")
    rows_mod = importlib.import_module(f"{package}.store.rows")
    exporter = exporter_mod.PostgresSpanExporter(dsn="postgresql://unused")  # never connects
    processed_sink, plain_sink = CollectingProcessor(), CollectingProcessor()
    processed = SpanMaker(
        make_provider(processor_mod.TokenEfficiencySpanProcessor(processed_sink))
    )
    plain = SpanMaker(make_provider(plain_sink))

    def rows_of(maker: SpanMaker, sink: CollectingProcessor) -> Callable[[], float]:
        def one_round() -> float:
            sink.spans.clear()
            maker.make(n)  # fresh copies: a forwarded span derives once, on first read
            spans = list(sink.spans)
            gc.collect()
            t0 = time.thread_time()
            for _ in exporter._rows(spans_mod.in_key_order(spans)):
                pass
            return (time.thread_time() - t0) / n * 1e6

        return one_round

    plain_sink.spans.clear()
    plain.make(n)
    data = [spans_mod.span_data(span) for span in plain_sink.spans]
    build_row = rows_mod.build_row

    def build_rows() -> float:
        gc.collect()
        t0 = time.thread_time()
        for item in data:
            build_row(item)
        return (time.thread_time() - t0) / n * 1e6

    return {
        "rows, processed spans": rows_of(processed, processed_sink),
        "rows, plain spans": rows_of(plain, plain_sink),
        "build_row": build_rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline-src", required=True, help="src directory of the baseline")
    parser.add_argument("--spans", type=int, default=2_000, help="spans per round (2,000)")
    parser.add_argument("--rounds", type=int, default=31, help="rounds (31)")
    args = parser.parse_args(argv)
    load_baseline(args.baseline_src)
    sides = {"baseline": workloads(BASE, args.spans), "candidate": workloads("tokentrace", args.spans)}
    names = list(sides["baseline"])
    times: dict[tuple[str, str], list[float]] = {(s, w): [] for s in sides for w in names}
    for side in sides:  # warm-up
        for name in names:
            sides[side][name]()
    for i in range(args.rounds):
        order = ["baseline", "candidate"] if i % 2 == 0 else ["candidate", "baseline"]
        for name in names:
            for side in order:
                times[(side, name)].append(sides[side][name]())
    print(f"{args.rounds} rounds of {args.spans} spans; thread CPU µs per span")
    print()
    print("| workload | baseline | candidate | candidate / baseline: median [IQR] |")
    print("|---|---:|---:|---:|")
    for name in names:
        base, cand = times[("baseline", name)], times[("candidate", name)]
        ratios = [c / b for b, c in zip(base, cand)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"| {name} | {statistics.median(base):.2f} | {statistics.median(cand):.2f} "
            f"| {statistics.median(ratios):.3f} [{q1:.3f}–{q3:.3f}] |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
