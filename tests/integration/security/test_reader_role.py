"""``tokentrace migrate --reader-role NAME``: a role for analysts that can read the
reports and nothing else (sql/0030_reader_access.sql)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.helpers import query
from tokentrace import reports
from tokentrace.cli import main
from tokentrace.store.rows import SpanData, build_row
from tokentrace.store.writer import SpanWriter

# How a reader calls each report function (tokentrace.report_function_names()).
CALLS = {
    "retention_days": "SELECT tokentrace.retention_days()",
    "rollup_retention_days": "SELECT tokentrace.rollup_retention_days()",
    "raw_horizon": "SELECT tokentrace.raw_horizon()::text",  # -infinity until the first prune
    "span_summary": "SELECT * FROM tokentrace.span_summary(now() - interval '2 days', now(), '1 hour')",
    "span_values": "SELECT * FROM tokentrace.span_values(now() - interval '2 days', now())",
    "window_plan": "SELECT * FROM tokentrace.window_plan(now() - interval '2 days', now())",
    "window_parts": "SELECT * FROM tokentrace.window_parts(now() - interval '2 days', now())",
    "efficiency": "SELECT * FROM tokentrace.efficiency('2 days', 'reader-model')",
    "efficiency_range": "SELECT * FROM tokentrace.efficiency_range(now() - interval '2 days')",
    "efficiency_change": "SELECT * FROM tokentrace.efficiency_change('1 hour', '2 days')",
    "efficiency_series": "SELECT * FROM tokentrace.efficiency_series('2 days', '1 hour')",
    # Buckets on the hour: answered from the rollups (0080).
    "efficiency_series_range": (
        "SELECT * FROM tokentrace.efficiency_series_range("
        "date_bin('1 hour', now() - interval '2 days', '2000-01-01'), 'infinity', '1 hour')"
    ),
    "efficiency_series_raw": (
        "SELECT * FROM tokentrace.efficiency_series_raw(now() - interval '2 days', now(), '1 hour')"
    ),
    "span_time_bounds": "SELECT * FROM tokentrace.span_time_bounds()",
    "relation_growth": "SELECT * FROM tokentrace.relation_growth(now() - interval '1 day')",
    "footprint_summary": "SELECT * FROM tokentrace.footprint_summary(10000000000)",
    "expected_latency": "SELECT * FROM tokentrace.expected_latency(800, 200, ARRAY['reader-model'])",
}
_names = itertools.count()


@pytest.fixture
def roles(db: str) -> Iterator[list[str]]:
    """Unique role names for this test; the roles are dropped afterwards."""
    made: list[str] = []
    yield made
    with psycopg.connect(db, autocommit=True) as conn:
        for role in made:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _role(roles: list[str]) -> str:
    name = f"tt_reader_{os.getpid()}_{next(_names)}"
    roles.append(name)
    return name


@pytest.fixture
def spans(db: str) -> None:
    """A few calls and a model load in the last hours."""
    now = time.time_ns()
    rows = []
    for i in range(6):
        start = now - (i + 1) * 600 * 10**9
        attributes: dict[str, Any] = {"gen_ai.request.model": "reader-model"}
        if i == 5:
            attributes["gen_ai.operation.name"] = "load_model"
        else:
            attributes.update({"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 50})
        data = SpanData(
            trace_id=(1000 + i).to_bytes(16, "big"),
            span_id=(1000 + i).to_bytes(8, "big"),
            parent_span_id=None,
            name="chat reader-model",
            kind="CLIENT",
            start_ns=start,
            end_ns=start + 10**9,
            attributes=attributes,
        )
        rows.append(build_row(data))
    writer = SpanWriter(db)
    try:
        writer.write(rows)
    finally:
        writer.close()


def _migrate_reader(db: str, role: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["migrate", "--dsn", db, "--reader-role", role]) == 0
    return capsys.readouterr().out


def _as(db: str, role: str) -> str:
    """A DSN whose sessions run as ``role`` (the test server's superuser switches to it)."""
    return make_conninfo(db, options=f"-c role={role}")


def test_migrate_creates_a_nologin_read_only_role(
    db: str, roles: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKENTRACE_READER_PASSWORD", raising=False)
    role = _role(roles)
    out = _migrate_reader(db, role, capsys)
    assert f"reader role {role!r} created" in out and "NOLOGIN" in out
    [(login, superuser, create_role, create_db)] = query(
        db,
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
        (role,),
    )
    assert (login, superuser, create_role, create_db) == (False, False, False, False)
    [(config,)] = query(
        db,
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE r.rolname = %s",
        (role,),
    )
    assert "default_transaction_read_only=on" in config
    # Running it again changes nothing and says so.
    assert f"reader role {role!r} updated" in _migrate_reader(db, role, capsys)


def test_a_reader_can_select_every_view_and_call_every_report_function(
    db: str, roles: list[str], spans: None, capsys: pytest.CaptureFixture[str]
) -> None:
    role = _role(roles)
    _migrate_reader(db, role, capsys)
    views = [
        r[0]
        for r in query(
            db,
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'tokentrace'::regnamespace "
            "AND c.relkind IN ('v', 'm') ORDER BY 1",
        )
    ]
    assert {"efficiency_24h", "stats_60d", "model_trends_60d", "footprint"} <= set(views)
    [(names,)] = query(db, "SELECT tokentrace.report_function_names()")
    assert set(names) == set(CALLS), "a report function without a call in this test"
    with psycopg.connect(_as(db, role), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
        for view in views:
            conn.execute(
                sql.SQL("SELECT * FROM tokentrace.{}").format(sql.Identifier(view))
            ).fetchall()
        for statement in CALLS.values():
            conn.execute(statement).fetchall()
        [efficiency] = conn.execute(
            "SELECT model, calls, loads FROM tokentrace.efficiency_24h WHERE model = 'reader-model'"
        ).fetchall()
        assert efficiency == ("reader-model", 5, 1)
    # The reports module, as the CLI and the HTTP endpoints use it.
    with reports.report_connection(_as(db, role)) as conn:
        as_reader = reports.efficiency(conn, 24, "reader-model")
        sixty = reports.sixty_day(conn)
        footprint = reports.footprint(conn)
    with reports.report_connection(db) as conn:
        assert reports.efficiency(conn, 24, "reader-model") == as_reader
    assert as_reader[0]["calls"] == 5 and sixty["overall"]["total_measurements"] >= 6
    assert footprint["oldest_span"] is not None


def _partitions(db: str) -> list[str]:
    return [r[0] for r in query(db, "SELECT partition::text FROM tokentrace.span_partitions")]


def test_a_reader_cannot_read_spans_nor_write_anything(
    db: str, roles: list[str], spans: None, capsys: pytest.CaptureFixture[str]
) -> None:
    role = _role(roles)
    _migrate_reader(db, role, capsys)
    refused = [
        "SELECT * FROM tokentrace.spans",
        *(f"SELECT * FROM {partition}" for partition in _partitions(db)),
        "SELECT * FROM tokentrace.span_rollups",
        "SELECT * FROM tokentrace.span_rollups_day",
        "SELECT * FROM tokentrace.settings",
        "SELECT * FROM tokentrace.schema_migrations",
        "COPY tokentrace.spans TO STDOUT",
        (
            "INSERT INTO tokentrace.spans (trace_id, span_id, name, kind, start_time, end_time) "
            "VALUES ('\\x01', '\\x01', 'n', 'k', now(), now())"
        ),
        "UPDATE tokentrace.settings SET value = '1'",
        "DELETE FROM tokentrace.spans",
        "TRUNCATE tokentrace.spans",
        "SELECT * FROM tokentrace.prune('1 day')",
        "SELECT tokentrace.ensure_partitions(ARRAY[current_date])",
        "SELECT tokentrace.rebuild_rollups(now() - interval '1 day', now())",
        f"SELECT * FROM tokentrace.grant_reader('{role}')",
        "SELECT tokentrace.secure_report_functions()",
        "CREATE TABLE tokentrace.mine (x int)",
        "CREATE VIEW tokentrace.mine AS SELECT 1",
        "CREATE TABLE public.mine (x int)",
        "DROP VIEW tokentrace.efficiency_24h",
        "ALTER FUNCTION tokentrace.efficiency(interval, text) SECURITY INVOKER",
        (
            "CREATE OR REPLACE FUNCTION tokentrace.raw_horizon() RETURNS timestamptz "
            "LANGUAGE sql AS 'SELECT now()'"
        ),
        "GRANT SELECT ON tokentrace.spans TO PUBLIC",
    ]
    with psycopg.connect(_as(db, role), autocommit=True) as conn:
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    [(count,)] = query(db, "SELECT count(*) FROM tokentrace.spans")
    assert count == 6


def test_rights_granted_by_hand_are_taken_back(
    db: str, roles: list[str], spans: None, capsys: pytest.CaptureFixture[str]
) -> None:
    role = _role(roles)
    _migrate_reader(db, role, capsys)
    with psycopg.connect(db, autocommit=True) as conn:
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON tokentrace.spans TO {}").format(ident))
        conn.execute(sql.SQL("GRANT ALL ON tokentrace.span_rollups TO {}").format(ident))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA tokentrace TO {}").format(ident))
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION tokentrace.rebuild_rollups TO {}").format(ident)
        )
    _migrate_reader(db, role, capsys)
    [privileges] = query(
        db,
        "SELECT has_table_privilege(%(r)s, 'tokentrace.spans', 'SELECT'),"
        " has_table_privilege(%(r)s, 'tokentrace.spans', 'INSERT'),"
        " has_table_privilege(%(r)s, 'tokentrace.span_rollups', 'SELECT'),"
        " has_schema_privilege(%(r)s, 'tokentrace', 'CREATE'),"
        " has_function_privilege(%(r)s, 'tokentrace.rebuild_rollups(timestamptz, timestamptz)', 'EXECUTE')",
        {"r": role},
    )
    assert privileges == (False, False, False, False, False)


def test_a_password_from_the_environment_lets_the_role_log_in(
    db: str,
    roles: list[str],
    spans: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "An4lyst-pass-word"
    monkeypatch.setenv("TOKENTRACE_READER_PASSWORD", password)
    role = _role(roles)
    out = _migrate_reader(db, role, capsys)
    assert "can log in" in out and password not in out
    [(login, verifier)] = query(
        db, "SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", (role,)
    )
    assert login is True
    assert verifier.startswith("SCRAM-SHA-256$") and password not in verifier
    # A session of its own (the test server trusts local connections, so this shows the
    # LOGIN right and the role's defaults, not the password check).
    with psycopg.connect(make_conninfo(db, user=role), autocommit=True) as conn:
        assert conn.execute("SELECT session_user::text").fetchone() == (role,)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT count(*) FROM tokentrace.efficiency_24h").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM tokentrace.spans")


def test_roles_that_can_do_more_than_read_are_refused(
    db: str, roles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    [(me,)] = query(db, "SELECT current_user::text")
    assert main(["migrate", "--dsn", db, "--reader-role", me]) == 1
    assert "can do more than read" in capsys.readouterr().err
    mighty = _role(roles)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} CREATEROLE").format(sql.Identifier(mighty)))
    assert main(["migrate", "--dsn", db, "--reader-role", mighty]) == 1
    assert "choose another name" in capsys.readouterr().err


def test_every_function_is_classified_and_only_report_functions_run_as_their_owner(db: str) -> None:
    """Every function's comment names its role (migration 0110): report (a reader may
    call it: SECURITY DEFINER, fixed search_path), pure, or write (no PUBLIC EXECUTE)."""
    rows = query(
        db,
        "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig,"
        " has_function_privilege('public', p.oid, 'EXECUTE'), p.prorettype = 'trigger'::regtype,"
        " substring(obj_description(p.oid, 'pg_proc') from '[(]tokentrace: ([a-z]+)[)]$')"
        " FROM pg_proc p WHERE p.pronamespace IN"
        " ('tokentrace'::regnamespace, 'tokentrace_expired'::regnamespace)",
    )
    unclassified = sorted(fn for fn, *_, role in rows if role not in ("report", "pure", "write"))
    assert not unclassified, f"give these functions a comment ending in their role: {unclassified}"
    [(names,)] = query(db, "SELECT tokentrace.report_function_names()")
    assert set(names) == {fn.split(".")[1].split("(")[0] for fn, *_, role in rows if role == "report"}
    for fn, definer, config, public, trigger, role in rows:
        if role == "report":
            assert definer, fn
            # A fixed search_path; besides it, only a planner setting (0070, 0080).
            assert "search_path=pg_catalog, tokentrace, pg_temp" in config, (fn, config)
            assert set(config) <= {
                "search_path=pg_catalog, tokentrace, pg_temp",
                "plan_cache_mode=force_generic_plan",
            }, (fn, config)
        else:
            assert not definer, f"{fn} runs as its owner but is not a report function"
        if role == "write" and not trigger:
            assert not public, f"PUBLIC may execute {fn}"
        if role == "pure":
            assert public, f"{fn} is pure: anyone may call it"