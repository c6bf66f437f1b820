"""The `tokentrace` command line, run as a user would (a subprocess)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import psycopg
import pytest

from tests.helpers import own_database, query
from tests.integration.original_shapes import PRETTY_SIZE, assert_footprint, assert_statistics
from tests.terminal import LOG_RECORD, in_a_terminal, screen_lines
from tokentrace.demo import run_demo
from tokentrace.tables import format_bytes

ROOT = Path(__file__).resolve().parents[2]


def tokentrace(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokentrace", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


PROGRESS = re.compile(r"  \[[#.]{30}\] +\d+/\d+ \S+")


def test_demo_keeps_log_lines_off_its_progress_line(dsn: str) -> None:
    with own_database(dsn, "tt_demo_terminal", migrated=False) as url:  # so it migrates, and logs that
        env = {**os.environ, "TOKENTRACE_DSN": url}
        returncode, raw = in_a_terminal(env, "-v", "demo", "--calls", "20", "--history-days", "1")
    assert returncode == 0, raw[-3000:]
    lines = screen_lines(raw)
    logged = [line for line in lines if LOG_RECORD.search(line)]
    assert any("applying migration 0001_spans.sql" in line for line in logged)  # -v: shown
    for line in logged:
        assert LOG_RECORD.match(line), f"a log record inside another line: {line!r}"
        assert len(LOG_RECORD.findall(line)) == 1, line
    progress = [line for line in lines if "[" in line and "/80 " in line]
    assert progress and all(PROGRESS.fullmatch(line) for line in progress), progress
    assert progress[-1].startswith("  [" + "#" * 30 + "]   80/80 ")
    assert any(re.fullmatch(r"Sent \d+ spans \(1 failed call\) to PostgreSQL", line) for line in lines)
    assert any(line.startswith("Efficiency over the last 24 h") for line in lines)


def test_demo_is_quiet_unless_asked(dsn: str) -> None:
    with own_database(dsn, "tt_demo_quiet", migrated=False) as url:
        env = {**os.environ, "TOKENTRACE_DSN": url}
        quiet = tokentrace(env, "demo", "--calls", "5", "--history-days", "0")
    assert quiet.returncode == 0, quiet.stderr
    assert not LOG_RECORD.search(quiet.stderr), quiet.stderr  # the migrations ran silently
    # Not a terminal: only the finished progress line, no redraws.
    assert quiet.stderr == "  [" + "#" * 30 + "]   20/20 llama3.1:70b\n"
    assert quiet.stdout.splitlines()[0].startswith("Store: ") and "dbname=tt_demo_quiet" in quiet.stdout
    with own_database(dsn, "tt_demo_verbose", migrated=False) as url:
        env = {**os.environ, "TOKENTRACE_DSN": url}
        verbose = tokentrace(env, "demo", "-v", "--calls", "5", "--history-days", "0")  # -v after the command
    assert verbose.returncode == 0, verbose.stderr
    logged = [line for line in verbose.stderr.splitlines() if LOG_RECORD.match(line)]
    assert any(line.endswith("INFO tokentrace.store.migrate: applying migration 0001_spans.sql") for line in logged)


def test_demo_then_reports(db: str, subprocess_env: dict[str, str]) -> None:
    out = tokentrace(subprocess_env, "demo", "--calls", "20", "--history-days", "0")
    assert out.returncode == 0, out.stderr
    assert "Efficiency over the last 24 h" in out.stdout
    for model in ("llama3.2:3b", "qwen2.5:7b", "mistral:7b-instruct", "llama3.1:70b"):
        assert model in out.stdout
    assert "Database footprint" in out.stdout and "Last 60 days" in out.stdout
    assert "240/240" not in out.stderr and "80/80" in out.stderr  # progress shown
    assert query(db, "SELECT count(*), count(*) FILTER (WHERE status = 'ERROR') FROM tokentrace.spans") == [(84, 1)]

    eff = tokentrace(subprocess_env, "report", "efficiency", "--json", "--hours", "12")
    assert eff.returncode == 0, eff.stderr
    payload = json.loads(eff.stdout)
    assert payload["status"] == "success" and payload["hours"] == 12.0
    rows = {r["model"]: r for r in payload["efficiency"]}
    assert set(rows) == {"llama3.2:3b", "qwen2.5:7b", "mistral:7b-instruct", "llama3.1:70b"}
    assert rows["llama3.2:3b"]["weighted_ms_per_token"] < rows["llama3.1:70b"]["weighted_ms_per_token"]
    assert sum(r["loads"] for r in rows.values()) == 4
    assert sum(r["errors"] for r in rows.values()) == 1

    one = json.loads(tokentrace(subprocess_env, "report", "efficiency", "--json", "--model", "qwen2.5:7b").stdout)
    assert [r["model"] for r in one["efficiency"]] == ["qwen2.5:7b"]

    stats = json.loads(tokentrace(subprocess_env, "report", "60day", "--json").stdout)
    assert stats["status"] == "success"
    assert stats["statistics"]["overall"]["total_measurements"] == 84
    assert stats["statistics"]["retention_window_days"] == 60
    assert len(stats["statistics"]["model_trends"]) == 4

    foot = json.loads(tokentrace(subprocess_env, "report", "footprint", "--json").stdout)
    assert foot["status"] == "success"
    relations = {r["relation"]: r for r in foot["footprint"]["relations"]}
    assert relations["spans"]["total_bytes"] > 0
    assert foot["footprint"]["oldest_span"] is not None


def test_human_reports_and_empty_state(db: str, subprocess_env: dict[str, str]) -> None:
    out = tokentrace(subprocess_env, "report", "efficiency")
    assert out.returncode == 0, out.stderr
    assert "no spans in this window" in out.stdout
    run_demo(db, calls_per_model=5, history_days=2)
    out = tokentrace(subprocess_env, "report", "efficiency", "--hours", "24")
    assert "ms/tok" in out.stdout and "llama3.1:70b" in out.stdout


@pytest.mark.parametrize("hours", ["0", "-3", "soon", "nan", "1e9"])
def test_bad_hours_is_a_clear_usage_error(subprocess_env: dict[str, str], hours: str) -> None:
    out = tokentrace(subprocess_env, "report", "efficiency", "--hours", hours)
    assert out.returncode == 2
    assert "hours must be" in out.stderr


def test_bad_environment_value_names_the_variable(db: str, subprocess_env: dict[str, str]) -> None:
    subprocess_env["TOKENTRACE_RETENTION_DAYS"] = "forever"
    out = tokentrace(subprocess_env, "prune")
    assert out.returncode == 2
    assert "TOKENTRACE_RETENTION_DAYS='forever' is not an integer" in out.stderr


def test_prune_removes_the_spans_then_frees_their_files(db: str, subprocess_env: dict[str, str]) -> None:
    import datetime as dt

    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=90)
    table = f"spans_{old:%Y%m%d}"
    query(db, "SELECT tokentrace.ensure_partitions(ARRAY[%s::date])", (old.date(),))
    with psycopg.connect(db) as conn:  # an expired day, stored as the writer stores it
        conn.execute(
            "INSERT INTO tokentrace.spans (trace_id, span_id, name, kind, model, operation, "
            "start_time, end_time) SELECT int8send(i), int8send(i), 'x', 'CLIENT', 'm', 'chat', "
            "%s, %s FROM generate_series(1, 50) i",
            (old, old),
        )
        # A detached partition a deferred prune left behind (its release never ran).
        conn.execute("CREATE TABLE tokentrace_expired.spans_20000101 (x int)")
    out = tokentrace(subprocess_env, "prune", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["status"] == "success"
    assert [r["partition"] for r in payload["removed"]] == [table]
    assert payload["spans_removed"] == 50
    assert sorted(r["table"] for r in payload["released"]) == ["spans_20000101", table]
    assert payload["bytes_released"] > 0 and payload["release_error"] is None
    assert payload["removed_ms"] >= 0 and payload["release_ms"] >= 0
    assert query(db, "SELECT count(*) FROM pg_class WHERE relnamespace = "
                 "'tokentrace_expired'::regnamespace") == [(0,)]
    assert query(db, "SELECT to_regclass(%s)", (f"tokentrace.{table}",)) == [(None,)]

    text = tokentrace(subprocess_env, "prune")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("pruned 0 day partition(s)")


def test_prune_report_sizes_are_in_one_unit_system(db: str, subprocess_env: dict[str, str]) -> None:
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=90)
    table = f"spans_{old:%Y%m%d}"
    query(db, "SELECT tokentrace.ensure_partitions(ARRAY[%s::date])", (old.date(),))
    with psycopg.connect(db) as conn:
        conn.execute(
            "INSERT INTO tokentrace.spans (trace_id, span_id, name, kind, model, operation, "
            "start_time, end_time) SELECT int8send(i), int8send(i), repeat('x', 200), 'CLIENT', 'm', "
            "'chat', %s, %s FROM generate_series(1, 2000) i",
            (old, old),
        )
    size = query(db, "SELECT pg_total_relation_size(%s::regclass)", (f"tokentrace.{table}",))[0][0]
    out = tokentrace(subprocess_env, "prune")
    assert out.returncode == 0, out.stderr
    summary, *rest = out.stdout.splitlines()
    assert f"1 table(s) released, {size / 1e6:,.1f} MB freed" in summary  # decimal MB
    freed = [line for line in rest if "freed in" in line]
    assert len(freed) == 1 and f"; {format_bytes(size)} freed in " in freed[0], out.stdout  # decimal too


def test_footprint_report_uses_one_unit_system(db: str, subprocess_env: dict[str, str]) -> None:
    run_demo(db, calls_per_model=10, history_days=3)
    out = tokentrace(subprocess_env, "report", "footprint")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    foot = json.loads(tokentrace(subprocess_env, "report", "footprint", "--json").stdout)["footprint"]
    sizes = re.findall(r"[-\d][\d,.]* ?(?:B|kB|KB|KiB|MB|MiB|GB|GiB|TB|TiB|bytes)\b", text)
    assert sizes, text
    for size in sizes:  # every size on the page in format_bytes's units; no raw byte counts
        assert PRETTY_SIZE.fullmatch(size), f"{size!r} in:\n{text}"
    assert "bytes" not in text and f"{foot['total_bytes']:,}" not in text
    header = re.fullmatch(r"Database footprint: tokentrace (.+) \(whole database (.+)\)", text.splitlines()[0])
    assert header and all(PRETTY_SIZE.fullmatch(size) for size in header.groups()), text
    table = text[text.index("relation "):].splitlines()
    assert table[0].split() == ["relation", "size", "rows", "(est.)"]
    # (Sizes move with autovacuum between two runs: the JSON's agreement with its own
    # byte counts is checked in test_report_json_has_the_original_shapes.)
    names = []
    for row in table[2:]:
        name, number, unit, rows = row.split()
        assert PRETTY_SIZE.fullmatch(f"{number} {unit}") and re.fullmatch(r"\d{1,3}(,\d{3})*", rows), row
        names.append(name)
    assert names == [r["relation"] for r in foot["relations"]]

    exact = tokentrace(subprocess_env, "report", "footprint", "--exact")
    assert exact.returncode == 0, exact.stderr
    assert "rows (exact)" in exact.stdout


def test_report_json_has_the_original_shapes(db: str, subprocess_env: dict[str, str]) -> None:
    run_demo(db, calls_per_model=5, history_days=1)
    stats = json.loads(tokentrace(subprocess_env, "report", "60day", "--json").stdout)
    assert stats["status"] == "success"
    assert_statistics(stats["statistics"])
    assert {t["component"] for t in stats["statistics"]["model_trends"]} == {
        "llama3.2:3b", "qwen2.5:7b", "mistral:7b-instruct", "llama3.1:70b"}  # fmt: skip
    before = dt.datetime.now().timestamp()
    out = tokentrace(subprocess_env, "report", "footprint", "--json", "--exact")
    after = dt.datetime.now().timestamp()
    foot = json.loads(out.stdout)["footprint"]
    assert_footprint(foot, before=before, after=after)
    assert foot["row_counts_source"] == "exact"
    assert foot["row_counts"]["spans"] == query(db, "SELECT count(*) FROM tokentrace.spans")[0][0]


def test_unreachable_database_is_one_clear_line_without_password(subprocess_env: dict[str, str]) -> None:
    subprocess_env["TOKENTRACE_DSN"] = "postgresql://bob:topsecret@127.0.0.1:1/x?connect_timeout=2"
    out = tokentrace(subprocess_env, "report", "footprint")
    assert out.returncode == 1
    assert out.stderr.startswith("tokentrace: cannot reach PostgreSQL:")
    assert "topsecret" not in out.stderr + out.stdout


def test_a_report_past_its_statement_timeout_says_so(db: str, subprocess_env: dict[str, str]) -> None:
    import psycopg

    subprocess_env["TOKENTRACE_REPORT_TIMEOUT_MS"] = "300"
    with psycopg.connect(db) as blocker:
        # Holding this lock makes every report wait past its timeout.
        blocker.execute("LOCK TABLE tokentrace.spans IN ACCESS EXCLUSIVE MODE")
        out = tokentrace(subprocess_env, "report", "efficiency")
        blocker.rollback()
    assert out.returncode == 1
    assert out.stderr.startswith("tokentrace: PostgreSQL cancelled the query: ")
    assert "statement timeout" in out.stderr
    assert "TOKENTRACE_REPORT_TIMEOUT_MS" in out.stderr
    assert "cannot reach" not in out.stderr


def test_help_explains_the_database_choice() -> None:
    out = subprocess.run([sys.executable, "-m", "tokentrace", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "TOKENTRACE_DSN" in out.stdout
    for command in ("demo", "serve", "report", "prune", "migrate", "psql"):
        assert command in out.stdout


def test_psql_opens_on_the_store(db: str, subprocess_env: dict[str, str]) -> None:
    out = tokentrace(subprocess_env, "psql", "--", "-At", "-c", "SELECT count(*) FROM efficiency_24h")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


@pytest.mark.slow
def test_demo_in_a_fresh_virtual_environment(tmp_path: Path) -> None:
    """The README's first command, as a new user runs it: install, then `tokentrace demo`."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TOKENTRACE_"))}
    env["TOKENTRACE_DATA_DIR"] = str(tmp_path / "data")
    demo = subprocess.run([str(env_dir / "bin" / "tokentrace"), "demo"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "Efficiency over the last 24 h" in demo.stdout
    assert "llama3.1:70b" in demo.stdout
