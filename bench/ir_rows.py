"""Instructions per exporter row, for `valgrind --tool=callgrind` (load-independent).

Builds 300 spans of ``bench_export.py``'s workload, ``processed`` (through
``TokenEfficiencySpanProcessor``) or ``plain``, then runs the exporter's row
iterator over them REPS times with the garbage collector off. Run it with REPS 1
and 4 under callgrind and divide the difference of the two instruction counts by
900: instructions per row, start-up and imports cancelled. PACKAGE is
``tokentrace`` (this tree) or ``tokentrace_baseline`` (the tree at BASELINE_SRC,
loaded under that name as ``bench_rows.py`` does)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/ir_rows.py tokentrace_baseline 4 /tmp/before/src processed

Usage: ir_rows.py PACKAGE REPS BASELINE_SRC [processed|plain]
"""

import sys, importlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
pkg, reps = sys.argv[1], int(sys.argv[2])
if pkg != "tokentrace":
    import bench_rows as BR
    BR.load_baseline(sys.argv[3])
from bench_export import CollectingProcessor, SpanMaker, make_provider
ex = importlib.import_module(f"{pkg}.exporter"); sp = importlib.import_module(f"{pkg}.exporter.spans")
pr = importlib.import_module(f"{pkg}.processor")
e = ex.PostgresSpanExporter(dsn="postgresql://unused")
kind = sys.argv[4] if len(sys.argv) > 4 else "processed"
sink = CollectingProcessor()
m = SpanMaker(make_provider(pr.TokenEfficiencySpanProcessor(sink) if kind == "processed" else sink))
m.make(300)
spans = list(sink.spans)
import gc; gc.disable()
for _ in range(reps):
    for _ in e._rows(sp.in_key_order(spans)): pass
