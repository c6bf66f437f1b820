"""tokentrace.store.errors: which database errors mean "away", and how they are described."""

from __future__ import annotations

import ast
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tokentrace.store import errors
from tokentrace.store.errors import (
    StoreRefused,
    StoreUnavailable,
    describe,
    is_unavailable,
    redact,
    translate,
)

SRC = Path(errors.__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.InterfaceError("the connection is closed"),
        psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_away_means_retry_later(exc: BaseException) -> None:
    assert is_unavailable(exc)
    assert type(translate(exc)) is StoreUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
        psycopg.errors.InsufficientPrivilege("permission denied for table spans"),
        psycopg.errors.UndefinedTable('relation "tokentrace.spans" does not exist'),
        psycopg.errors.InvalidTextRepresentation("invalid input syntax for type integer"),
        psycopg.ProgrammingError("syntax error"),
        psycopg.DataError("value too long"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_an_answer_from_the_server_is_a_refusal(exc: BaseException) -> None:
    assert not is_unavailable(exc)
    assert type(translate(exc)) is StoreRefused


def test_both_kinds_are_store_errors_carrying_the_description() -> None:
    refused = translate(psycopg.DataError("bad value\nDETAIL: more"))
    away = translate(psycopg.OperationalError("gone\nsecond line"))
    assert isinstance(refused, errors.StoreError) and isinstance(away, errors.StoreError)
    assert (str(refused), str(away)) == ("bad value", "gone")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (psycopg.OperationalError("  first line\n\tsecond line\n"), "first line"),
        (psycopg.OperationalError(""), "OperationalError"),
        (psycopg.InterfaceError("   "), "InterfaceError"),
        (
            psycopg.OperationalError(
                'connection to "postgresql://ann:hunter2@db:5432/x" failed\nDETAIL: hunter2'
            ),
            'connection to "postgresql://ann:***@db:5432/x" failed',
        ),
        (psycopg.ProgrammingError("bad dsn: password=hunter2 host=h"), "bad dsn: password=*** host=h"),
        (RuntimeError("migration 0001 changed since it was applied"),
         "migration 0001 changed since it was applied"),
    ],
)
def test_described_as_the_first_line_without_the_password(exc: BaseException, expected: str) -> None:
    assert describe(exc) == expected


def test_a_real_libpq_parse_error_quoting_the_password_is_redacted() -> None:
    # libpq quotes the token it cannot decode: here, part of the password.
    with pytest.raises(psycopg.ProgrammingError) as caught:
        conninfo_to_dict("postgresql://ann:%zzhunter2@db/x")
    assert "hunter2" in str(caught.value)
    text = describe(caught.value)
    assert "hunter2" not in text and "invalid percent-encoded token" in text


def test_a_real_refused_connection_is_away_and_described_in_one_line() -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect("postgresql://ann:hunter2@127.0.0.1:1/x", connect_timeout=2)
    assert is_unavailable(caught.value)
    text = describe(caught.value)
    assert "\n" not in text and "hunter2" not in text and "127.0.0.1" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("host=h password=s3cret user=u", "host=h password=*** user=u"),
        ("password='a b' host=h", "password=*** host=h"),
        ("PASSWORD = s3cret", "PASSWORD = ***"),
        ('invalid percent-encoded token: "%zzs3cret"', 'invalid percent-encoded token: "***"'),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_passwords_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def _calls(path: Path) -> set[str]:
    """Dotted names of the functions ``path`` calls (``psycopg.connect``, ``is_current``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                names.add(f"{func.value.id}.{func.attr}")
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def test_every_connection_goes_through_the_one_connect() -> None:
    direct = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "psycopg.connect" in _calls(path)
    )
    assert direct == ["store/connection.py"]


def test_migrating_when_needed_is_one_function() -> None:
    # `if not is_current(dsn): migrate(dsn)` lives in store.migrate.migrate_if_needed only.
    callers = sorted(
        str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if "is_current" in _calls(path)
    )
    assert callers == ["store/migrate.py"]
