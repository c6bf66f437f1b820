"""``sql/schema.sql`` is what the migrations make, and makes it too (store/schema.py)."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import own_database
from tokentrace.store import schema
from tokentrace.store.embedded import pg_binary

_HEADER_MAJOR = "pg_dump of PostgreSQL "


def _committed() -> str:
    return schema.schema_file().read_text("utf-8")


@pytest.fixture
def committed_major(dsn: str) -> int:
    text = _committed()
    major = int(text.split(_HEADER_MAJOR, 1)[1].split(",")[0].split(")")[0])
    if schema.server_major(dsn) != major:
        pytest.skip(
            f"schema.sql was generated on PostgreSQL {major}; this server's pg_dump output "
            "differs in form (run the test on the embedded server)"
        )
    return major


def test_migrating_an_empty_database_reproduces_schema_sql(dsn: str, committed_major: int) -> None:
    with own_database(dsn, "tt_schema_migrated") as url:
        assert schema.dump(url) == _committed(), (
            "sql/schema.sql is not what the migrations make: run python -m tokentrace.store.schema"
        )


def test_schema_sql_run_on_an_empty_database_makes_the_same_schema(
    dsn: str, committed_major: int
) -> None:
    with own_database(dsn, "tt_schema_loaded", migrated=False) as url:
        subprocess.run(
            [pg_binary("psql"), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-q", "-f",
             str(schema.schema_file()), url],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        assert schema.dump(url) == _committed()


def test_normalize_drops_what_varies_and_keeps_the_objects() -> None:
    dump = (
        "--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 16.2\n"
        "SET check_function_bodies = false;\n"
        "\\restrict abc\n\n\n\n--\n-- Name: t; Type: TABLE; Schema: tokentrace; Owner: -\n--\n\n"
        "CREATE TABLE tokentrace.t (x int);   \n\n\n\nCOMMENT ON TABLE tokentrace.t IS '-- kept';\n"
    )
    assert schema.normalize(dump) == (
        "SET check_function_bodies = false;\n\nCREATE TABLE tokentrace.t (x int);\n\nCOMMENT ON TABLE tokentrace.t IS '-- kept';\n"
    )
