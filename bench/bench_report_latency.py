"""Report latency as ``tokentrace serve`` answers it: kept connections against a new one each.

Loads ``--spans`` synthetic spans over 60 days (the generator of ``bench_reports.py``)
into a fresh embedded PostgreSQL (or ``--dsn``, an empty database), starts the receiver
in process, and in each of ``--runs`` rounds times, per endpoint:

* **kept**: ``GET`` over one keep-alive HTTP connection to the server as shipped, which
  reads on report connections it keeps between requests (``tokentrace.store.pool``);
  and ``compat.Telemetry.get_aggregated_efficiency()``, which keeps one too;
* **new connection**: the same report as the server made it before, in process and
  without HTTP: a new report connection (``reports.report_connection``), the report,
  close — what every request paid: connecting, and a new server session's first
  queries (catalog caches, the report functions' plans);
* **warm SQL**: the report on one connection that has run it before, in process (the
  floor under any HTTP answer).

Prints medians and the ratio new connection / kept. ``--quick``: 100 k spans, 7 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import bench_reports as B
import psycopg

from tokentrace import reports
from tokentrace.compat import Telemetry
from tokentrace.dashboard import page
from tokentrace.receiver.server import Receiver
from tokentrace.receiver.settings import Endpoint, ServeSettings

Report = Callable[[psycopg.Connection[Any]], object]
ENDPOINTS: dict[str, Report] = {
    "/telemetry/efficiency": lambda conn: reports.efficiency(conn, 24, None),
    "/telemetry/60day": reports.sixty_day,
    "/telemetry/footprint": reports.footprint,
    "/ (dashboard, 24 h)": lambda conn: page.render_page(conn),
}
# The drop-in's report call (in process, no HTTP): it keeps its connection too.
COMPAT = "compat.Telemetry.get_aggregated_efficiency()"


def _ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def _get(client: http.client.HTTPConnection, path: str) -> None:
    client.request("GET", path.split(" ")[0])
    response = client.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"GET {path}: HTTP {response.status}")


def _new_connection(dsn: str, report: Report) -> None:
    with reports.report_connection(dsn) as conn:
        report(conn)


def time_endpoints(dsn: str, port: int, runs: int) -> dict[str, dict[str, float]]:
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    loop = asyncio.new_event_loop()
    telemetry = Telemetry(dsn)
    kept: dict[str, Callable[[], object]] = {
        path: partial(_get, client, path) for path in ENDPOINTS
    }
    kept[COMPAT] = lambda: loop.run_until_complete(telemetry.get_aggregated_efficiency())
    times: dict[str, dict[str, list[float]]] = {
        name: {"kept": [], "new": [], "warm": []} for name in kept
    }
    with reports.report_connection(dsn) as warm:
        for name, report in _reports().items():  # untimed: first use of each connection
            kept[name]()
            report(warm)
        for _ in range(runs):
            for name, report in _reports().items():
                times[name]["kept"].append(_ms(kept[name]))
                times[name]["new"].append(_ms(partial(_new_connection, dsn, report)))
                times[name]["warm"].append(_ms(partial(report, warm)))
    client.close()
    loop.close()
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def _reports() -> dict[str, Report]:
    return {**ENDPOINTS, COMPAT: ENDPOINTS["/telemetry/efficiency"]}


def render(results: dict[str, dict[str, float]]) -> str:
    head = (
        "| report | kept connection (HTTP; compat in process) | new connection per report (in process) "
        "| ratio | warm SQL (in process) |"
    )
    lines = [head, "|---|---:|---:|---:|---:|"]
    for path, r in results.items():
        lines.append(
            f"| `{path}` | {r['kept']:.1f} ms | {r['new']:.1f} ms | "
            f"{r['new'] / r['kept']:.1f}× | {r['warm']:.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=1_000_000, help="spans to load (default 1 M)")
    parser.add_argument("--runs", type=int, default=21, help="timed rounds (median; default 21)")
    parser.add_argument("--quick", action="store_true", help="100 k spans, 7 rounds")
    parser.add_argument(
        "--dsn", help="an existing, EMPTY PostgreSQL (default: a fresh embedded one)"
    )
    args = parser.parse_args(argv)
    spans, runs = (100_000, 7) if args.quick else (args.spans, args.runs)
    with B._server(args.dsn) as dsn:
        from tokentrace.store.migrate import migrate

        migrate(dsn)
        print(B._machine(dsn), flush=True)
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=B.DAYS)
        print(f"loading {spans:,} spans: {B.load(dsn, spans, start, seq=0):.0f} s", flush=True)
        loopback = Endpoint("127.0.0.1", 0)
        receiver = Receiver(ServeSettings(grpc_endpoint=loopback, http_endpoint=loopback), dsn)
        receiver.start()
        try:
            results = time_endpoints(dsn, receiver.http_port, runs)
        finally:
            receiver.stop()
    print(f"\n{spans:,} spans, median of {runs} rounds ({time.strftime('%Y-%m-%d %H:%M %Z')})\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
