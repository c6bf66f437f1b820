"""The ``tokentrace`` command line.

::

    tokentrace demo                         # a simulated fleet → embedded PostgreSQL → reports
    tokentrace demo -v                      # … with tokentrace's log lines (migrations, server)
    tokentrace serve                        # OTLP gRPC :4317 + HTTP :4318, reports over HTTP
    tokentrace report efficiency --hours 6  # token-weighted ms/token per model
    tokentrace report 60day --json
    tokentrace report footprint
    tokentrace route --prompt-tokens 800 --output-tokens 200   # which model, now?
    tokentrace alerts                       # exit 1 when an alert fires (tokentrace.alerts_cli)
    tokentrace prune --retention-days 30
    tokentrace migrate                      # on a Citus coordinator: distributed (--citus: insist)
    tokentrace psql                         # psql on the store

The database is ``--dsn``, else ``TOKENTRACE_DSN``, else the libpq ``PG*``
variables, else tokentrace's embedded PostgreSQL (in ``TOKENTRACE_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from tokentrace import alerts_cli, reports
from tokentrace.config import ConfigError, retention_days
from tokentrace.store.connection import describe, resolve_dsn
from tokentrace.store.errors import describe as describe_error
from tokentrace.store.errors import is_unavailable
from tokentrace.tables import format_bytes, render

_log = logging.getLogger("tokentrace")

EFFICIENCY_TABLE = (
    ("model", "model"),
    ("calls", "calls"),
    ("input_tokens", "in tok"),
    ("output_tokens", "out tok"),
    ("weighted_ms_per_token", "ms/tok"),
    ("p50_ms_per_token", "p50"),
    ("p95_ms_per_token", "p95"),
    ("decode_ms_per_token", "decode"),
    ("loads", "loads"),
    ("avg_load_ms", "load ms"),
    ("errors", "errors"),
)
TRENDS_TABLE = (
    ("model", "model"),
    ("avg_efficiency", "ms/tok (60d)"),
    ("measurement_count", "calls"),
    ("total_tokens_processed", "tokens"),
)
ROUTE_TABLE = (
    ("rank", "#"),
    ("model", "model"),
    ("expected_ms", "expected ms"),
    ("p90_ms", "p90 ms"),
    ("state", "warm"),
    ("expected_load_ms", "load ms"),
    ("prefill_ms_per_token", "prefill/tok"),
    ("decode_ms_per_token", "decode/tok"),
    ("calls", "calls"),
    ("trust", "trust"),
)
FOOTPRINT_TABLE = (  # raw byte counts are in --json; one unit system on the page
    ("relation", "relation"),
    ("total_size", "size"),
    ("row_estimate", "rows (est.)"),
)


def _dsn(args: argparse.Namespace) -> str:
    return resolve_dsn(getattr(args, "dsn", None))


def _ensure_schema(dsn: str) -> None:
    from tokentrace.store.migrate import migrate_if_needed

    migrate_if_needed(dsn)


# --- commands -------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> int:
    from tokentrace.store.citus import CitusSchemaError
    from tokentrace.store.migrate import MigrationError, migrate

    dsn = _dsn(args)
    days = retention_days(args.retention_days)
    try:
        applied = migrate(dsn, retention_days=days, require_citus=args.citus)
    except (MigrationError, CitusSchemaError) as exc:
        print(f"tokentrace migrate: {exc}", file=sys.stderr)
        return 1
    where = describe(dsn)
    if applied:
        print(f"applied {', '.join(applied)} to {where}")
    else:
        print(f"schema up to date on {where}")
    if args.reader_role:
        return _grant_reader(dsn, args.reader_role)
    return 0


READER_PASSWORD_ENV = "TOKENTRACE_READER_PASSWORD"


def _grant_reader(dsn: str, role: str) -> int:
    """Create or update the read-only role ``role`` (sql/0030_reader_access.sql)."""
    from tokentrace.store.connection import connect

    password = os.environ.get(READER_PASSWORD_ENV) or None
    try:
        with connect(dsn, autocommit=True) as conn:
            # Hashed here: the clear text never reaches the server, its logs or pg_stat_activity.
            verifier = (
                conn.pgconn.encrypt_password(password.encode(), role.encode()).decode()
                if password
                else None
            )
            row = conn.execute(
                "SELECT views, functions, can_login, created FROM tokentrace.grant_reader(%s, %s)",
                (role, verifier),
            ).fetchone()
    except (psycopg.errors.RaiseException, psycopg.errors.InsufficientPrivilege) as exc:
        reason = exc.diag.message_primary or str(exc)
        print(f"tokentrace migrate: reader role {role!r}: {reason}", file=sys.stderr)
        return 1
    assert row is not None
    views, functions, can_login, created = row
    login = (
        f"can log in (password from ${READER_PASSWORD_ENV})"
        if can_login
        else f"NOLOGIN (set ${READER_PASSWORD_ENV} to let it log in, or GRANT it to a login role)"
    )
    print(
        f"reader role {role!r} {'created' if created else 'updated'}: SELECT on {views} views, "
        f"EXECUTE on {functions} report functions and helpers, no access to tokentrace.spans; {login}"
    )
    return 0


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


def cmd_report(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    _ensure_schema(dsn)
    with reports.report_connection(dsn) as conn:
        if args.report == "efficiency":
            rows = reports.efficiency(conn, args.hours, args.model)
            if args.json:
                _print_json({"status": "success", "hours": args.hours, "efficiency": rows})
            else:
                _print_efficiency(rows, args.hours, args.model)
        elif args.report == "60day":
            stats = reports.sixty_day(conn)
            if args.json:
                _print_json({"status": "success", "statistics": stats})
            else:
                _print_sixty_day(stats)
        else:
            foot = reports.footprint(conn, exact=args.exact)
            if args.json:
                _print_json({"status": "success", "footprint": foot})
            else:
                _print_footprint(foot)
    return 0


def _print_efficiency(rows: list[dict[str, Any]], hours: float, model: str | None) -> None:
    scope = f" for model {model!r}" if model else ""
    print(f"Efficiency over the last {hours:g} h{scope} (token-weighted ms per output token)")
    if not rows:
        print("  no spans in this window — run `tokentrace demo`, or point an OTLP exporter at `tokentrace serve`")
        return
    print(render(rows, EFFICIENCY_TABLE))


def _print_sixty_day(stats: dict[str, Any]) -> None:
    o = stats["overall"]
    print(f"Last 60 days (raw spans kept {stats['retention_window_days']} days)")
    print(f"  measurements {o['total_measurements']:,}   models {o['unique_models']}   tokens {o['total_tokens']:,}")
    print(f"  oldest {o['oldest_record'] or '-'}   newest {o['newest_record'] or '-'}")
    if stats["model_trends"]:
        print(render(stats["model_trends"], TRENDS_TABLE))


def _print_footprint(foot: dict[str, Any]) -> None:
    # Every size here is tables.format_bytes's (decimal units), as the report's own strings are.
    print(f"Database footprint: tokentrace {foot['total_size']}"
          f" (whole database {format_bytes(foot['database_bytes'])})")
    print(f"  oldest span {foot['oldest_span'] or '-'}   newest span {foot.get('newest_span') or '-'}")
    print(f"  growth {foot['spans_per_day']:,.0f} spans/day, {format_bytes(foot['bytes_per_day'])}/day"
          f" (last 7 days)   settles at {foot['projected_size']}"
          f" (raw {foot['retention_days']} d, rollups {foot['rollup_retention_days']} d)")
    if foot.get("disk_cap_bytes"):
        cap = format_bytes(foot["disk_cap_bytes"])
        if foot["fits_within_cap"]:
            print(f"  fits within the {cap} cap")
        elif foot["days_until_cap"] is not None:
            print(f"  reaches the {cap} cap in {foot['days_until_cap']:,.1f} days")
    exact = foot.get("row_counts_source") == "exact"
    print(render(foot["relations"], FOOTPRINT_TABLE + ((("exact_rows", "rows (exact)"),) if exact else ())))


def cmd_route(args: argparse.Namespace) -> int:
    from tokentrace import expected

    dsn = _dsn(args)
    _ensure_schema(dsn)
    models = [m.strip() for value in args.model or () for m in value.split(",") if m.strip()] or None
    half_life = dt.timedelta(minutes=args.half_life_minutes)
    rows = expected.expected_latency(
        dsn, args.prompt_tokens, args.output_tokens, models, half_life=half_life
    )
    rows = expected.require_known(rows, models)
    if args.json:
        _print_json({
            "status": "success", "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
            "half_life_minutes": args.half_life_minutes, "estimates": [e.to_json() for e in rows],
        })  # fmt: skip
        return 0
    print(f"Expected latency of {args.prompt_tokens:,} prompt + {args.output_tokens:,} output tokens, "
          f"fastest first (half-life {args.half_life_minutes:g} min)")  # fmt: skip
    if not rows:
        print("  no calls in the last 14 days — run `tokentrace demo`, or point an OTLP exporter at `tokentrace serve`")
        return 0
    table = [
        {**e.to_json(), "state": "warm" if e.warm else "cold", "trust": e.reason or "ok"} for e in rows
    ]
    print(render(table, ROUTE_TABLE))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from tokentrace.retention import prune

    dsn = _dsn(args)
    _ensure_schema(dsn)
    # Two phases: the spans go (partitions detached, lock on spans released), then
    # the detached tables are dropped and their files freed without blocking writers.
    result = prune(dsn, args.retention_days, args.rollup_retention_days)
    failed = result.release_error is not None
    if args.json:
        _print_json({"status": "partial" if failed else "success", **result.as_json()})
    else:
        print(result.summary())
        for part in result.partitions:
            print(f"  {part.partition}  {part.day}  {part.spans:,} spans")
        if result.released:
            print(
                f"  spans gone in {result.removed_ms:,.1f} ms; "
                f"{format_bytes(result.bytes_released)} freed in {result.release_ms or 0.0:,.1f} ms more"
            )
    if failed:
        print(
            f"tokentrace: the spans were pruned, but freeing their files failed: "
            f"{result.release_error}\n(the next prune retries; or run "
            f"SELECT * FROM tokentrace_expired.release_pruned())",
            file=sys.stderr,
        )
        return 1
    return 0


def _psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from tokentrace.store.embedded import psql_path

    return psql_path()


def cmd_psql(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    _ensure_schema(dsn)
    extra = list(args.psql_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    command = [_psql_binary(), *extra, *([dsn] if dsn else [])]
    env = dict(os.environ)
    env.setdefault("PGOPTIONS", "-c search_path=tokentrace,public")
    return subprocess.call(command, env=env)


def cmd_demo(args: argparse.Namespace) -> int:
    from tokentrace.demo import run_demo

    dsn = _dsn(args)
    print(f"Store: {_where(dsn)}")
    run_demo(dsn, calls_per_model=args.calls, seed=args.seed, history_days=args.history_days)
    print()
    with reports.report_connection(dsn) as conn:
        _print_efficiency(reports.efficiency(conn, 24, None), 24, None)
        print()
        _print_sixty_day(reports.sixty_day(conn))
        print()
        _print_footprint(reports.footprint(conn))
    print("\nNext: `tokentrace serve` and open http://127.0.0.1:4318/ , or `tokentrace psql`.")
    return 0


def _where(dsn: str) -> str:
    """``dsn`` for people: the embedded server's directory, else the DSN without password."""
    from psycopg.conninfo import conninfo_to_dict

    from tokentrace.store.embedded import default_data_dir

    host = str(conninfo_to_dict(dsn).get("host") or "") if dsn else ""
    if host and os.path.realpath(host) == os.path.realpath(default_data_dir()):
        return f"embedded PostgreSQL in {host}"
    return describe(dsn)


def cmd_serve(args: argparse.Namespace) -> int:
    from tokentrace.receiver import cli as receiver_cli

    return receiver_cli.run(args)


# --- parser ---------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        return reports.check_hours(text)
    except reports.ReportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _token_count(text: str) -> int:
    from tokentrace.expected import ExpectedLatencyError, check_tokens

    try:
        return check_tokens("token count", text)
    except ExpectedLatencyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _half_life_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not 0 < value <= 7 * 24 * 60:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {7 * 24 * 60} minutes, not {text}")
    return value


def _route_parser(sub: Any) -> None:
    p = sub.add_parser(
        "route", help="which model, now? expected latency of a request per model",
        description="Rank the models by the expected latency of a request of this size now: a "
        "recency-weighted fit of ms = intercept + prefill·P + decode·O per model, plus the load "
        "time when the model is likely unloaded (see docs/routing.md).",
    )  # fmt: skip
    p.add_argument("--prompt-tokens", type=_token_count, required=True, metavar="P", help="prompt tokens")
    p.add_argument("--output-tokens", type=_token_count, required=True, metavar="O",
                   help="output tokens expected")  # fmt: skip
    p.add_argument("--model", action="append", metavar="M",
                   help="only this model (repeatable, or comma-separated); default: every model seen "
                   "in the last 14 days")  # fmt: skip
    p.add_argument("--half-life-minutes", type=_half_life_minutes, default=30.0,
                   help="how fast older calls stop counting (default 30)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable JSON instead of a table")
    _add_dsn(p)
    p.set_defaults(func=cmd_route)


def _add_dsn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL connection string (default: $TOKENTRACE_DSN, then PG* variables, "
        "then the embedded server)",
    )


def _report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="print a report", description="Print one of the reports.")
    p.add_argument("report", choices=("efficiency", "60day", "footprint"), help="which report")
    p.add_argument("--hours", type=_positive_float, default=24.0, help="efficiency window in hours (default 24)")
    p.add_argument("--model", help="only this model (efficiency report)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON instead of a table")
    p.add_argument("--exact", action="store_true",
                   help="footprint: count every relation's rows (slow on a big store) besides the estimates")
    _add_dsn(p)
    p.set_defaults(func=cmd_report)


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="receive OTLP spans (gRPC :4317, HTTP :4318) and serve the reports",
        description="Run the OTLP receiver (gRPC and HTTP) and the HTTP reports and dashboard.",
    )
    try:
        from tokentrace.receiver import cli as receiver_cli
    except ImportError:  # pragma: no cover - receiver missing from a broken install
        return
    receiver_cli.add_arguments(p)
    if not any(a.dest == "dsn" for a in p._actions):
        _add_dsn(p)
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from tokentrace._version import __version__

    parser = argparse.ArgumentParser(
        prog="tokentrace",
        description="Token-aware telemetry for LLM model serving: ms/token per model, "
        "from OpenTelemetry spans stored in PostgreSQL.",
        epilog="Database: --dsn, else $TOKENTRACE_DSN, else PG* variables, else an embedded "
        "PostgreSQL in $TOKENTRACE_DATA_DIR. See `tokentrace COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"tokentrace {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="simulate a fleet of models and print the reports",
                       description="Send a simulated fleet's spans through the real processor and "
                       "exporter into the database, then print the three reports. Quiet: "
                       "tokentrace's log lines (schema migrations, the embedded server starting) "
                       "show only with -v; warnings always.")
    # Also after the command (`tokentrace demo -v`); SUPPRESS keeps `tokentrace -v demo`'s count.
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="show tokentrace's log lines (-vv for debug)")
    p.add_argument("--calls", type=_positive_int, default=60, help="inference calls per model (default 60)")
    p.add_argument("--history-days", type=int, default=14,
                   help="days of lighter traffic before the last hours (default 14; 0 for none)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    _add_dsn(p)
    p.set_defaults(func=cmd_demo)

    _serve_parser(sub)
    _report_parser(sub)
    _route_parser(sub)
    alerts_cli.add_parser(sub, _add_dsn)

    p = sub.add_parser("prune", help="drop raw spans older than the retention window",
                       description="Drop whole day partitions older than the retention window, and "
                       "rollups older than the (longer) rollup retention. Two steps: the partitions "
                       "are detached (the spans are gone, writers unblocked), then dropped (their "
                       "files freed, writers not blocked).")
    p.add_argument("--retention-days", type=_positive_int, default=None,
                   help="days of raw spans to keep (default: $TOKENTRACE_RETENTION_DAYS or 60)")
    p.add_argument("--rollup-retention-days", type=_positive_int, default=None,
                   help="days of hourly/daily rollups to keep (default: $TOKENTRACE_ROLLUP_RETENTION_DAYS "
                   "or 400, at least --retention-days)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    _add_dsn(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("migrate", help="create or upgrade the schema",
                       description="Apply the numbered SQL migrations that are missing (safe to repeat).")
    p.add_argument("--retention-days", type=_positive_int, default=None,
                   help="retention window the reports state (default: $TOKENTRACE_RETENTION_DAYS or 60)")
    p.add_argument("--reader-role", metavar="NAME",
                   help="also create (or update) NAME, a read-only role for analysts: SELECT on the views "
                   "and EXECUTE on the report functions, no access to tokentrace.spans, no writes; "
                   f"NOLOGIN unless ${READER_PASSWORD_ENV} holds a password for it")
    p.add_argument("--citus", action="store_true",
                   help="require a Citus cluster: refuse a database without the citus extension "
                   "(with the extension the schema is distributed either way; docs/scaling.md)")
    _add_dsn(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("psql", help="open psql on the store", description="Open psql on the store; "
                       "extra arguments go to psql (e.g. tokentrace psql -- -c 'select 1').")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="arguments for psql")
    _add_dsn(p)
    p.set_defaults(func=cmd_psql)
    return parser


def _setup_logging(verbosity: int, command: str | None = None) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pgserver narrates every pg_ctl call at INFO; keep it for -vv.
    logging.getLogger("pgserver").setLevel(logging.INFO if verbosity > 1 else logging.WARNING)
    # tokentrace says what it does at INFO (serve, migrate, prune); the demo's own output
    # says that to a new user, so its INFO lines wait for -v.
    logging.getLogger("tokentrace").setLevel(level if command == "demo" else min(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.command)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"tokentrace: configuration error: {exc}", file=sys.stderr)
        return 2
    except reports.ReportError as exc:
        print(f"tokentrace: {exc}", file=sys.stderr)
        return 2
    except psycopg.errors.QueryCanceled as exc:
        # A subclass of OperationalError, but the server answered: say what happened.
        print(
            f"tokentrace: PostgreSQL cancelled the query: {describe_error(exc)}"
            " (reports are limited by TOKENTRACE_REPORT_TIMEOUT_MS)",
            file=sys.stderr,
        )
        return 1
    except psycopg.Error as exc:
        what = "cannot reach PostgreSQL" if is_unavailable(exc) else "PostgreSQL error"
        print(f"tokentrace: {what}: {describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
