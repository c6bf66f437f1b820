"""The DSN's password never shows: not in logs, errors, ``--help`` or the reports.

Each case uses a DSN with a password against a server that does not exist (port 1
on loopback), one that refuses the connection (an unknown role), a DSN libpq cannot
parse (a bad %-escape inside the password), and, for the reports, one that works.
Output is checked for the password and for its percent-encoded form.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from typing import Any
from urllib.parse import quote

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.receiver.clients import Http, valid_request
from tests.integration.receiver.conftest import StartReceiver
from tests.integration.receiver.test_serve_process import ServeProcess
from tokentrace.cli import build_parser, main
from tokentrace.exporter import PostgresSpanExporter
from tokentrace.receiver.server import prepare_database

PASSWORD = "Pw-7f1d-S3cr3t"
FORMS = (PASSWORD, quote(PASSWORD, safe=""), "S3cr3t")


def _no_password(text: str) -> None:
    for form in FORMS:
        assert form not in text, f"the password shows in:\n{text}"


def _bad_dsns(db: str) -> dict[str, str]:
    return {
        "no server": f"postgresql://tokentrace:{PASSWORD}@127.0.0.1:1/tokentrace?connect_timeout=3",
        "no server, keywords": f"host=127.0.0.1 port=1 dbname=x password={PASSWORD} connect_timeout=3",
        "refused": f"{db}&user=no_such_role&password={PASSWORD}",
        "unparsable": f"postgresql://u:{PASSWORD}%zz@127.0.0.1:1/x",
    }


def _working_dsn(db: str) -> str:
    return f"{db}&password={PASSWORD}"  # the embedded server trusts local connections


# --- logs and errors, in process ----------------------------------------------------------------
def test_in_process_logs_and_answers_show_no_password(
    db: str, start_receiver: StartReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    for name, dsn in _bad_dsns(db).items():
        if name == "unparsable":
            continue  # refused before any connection: see the CLI and serve tests
        assert prepare_database(dsn) is False
        receiver = start_receiver(dsn=dsn)
        http = Http(receiver.http_port)
        try:
            export = http.post(valid_request(1, salt=21))
            assert export.status == 503
            answers.append(export.body.decode("utf-8", "replace"))
            for path in (
                "/healthz",
                "/telemetry/efficiency",
                "/telemetry/60day",
                "/telemetry/footprint",
                "/",
            ):
                result = http.get(path)
                assert result.status in (200, 503), (path, result.status)
                answers.append(result.body.decode("utf-8", "replace"))
        finally:
            http.close()
    _no_password("\n".join(answers))
    _no_password(caplog.text)
    assert "database not reachable yet" in caplog.text  # the failures were logged


def test_the_exporter_logs_no_password(db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("chat m") as span:
        span.set_attribute("gen_ai.request.model", "m")
    provider.shutdown()
    for dsn in _bad_dsns(db).values():
        exporter = PostgresSpanExporter(dsn)
        try:
            exporter.export(memory.get_finished_spans())
        finally:
            exporter.shutdown()
    _no_password(caplog.text)


# --- the command line -----------------------------------------------------------------------------
def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tokentrace", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_errors_show_no_password(db: str, subprocess_env: dict[str, str]) -> None:
    """Every command that reaches for the database, with each bad DSN given as --dsn and
    as TOKENTRACE_DSN, as users run them (subprocesses: tracebacks would show too)."""
    runs: list[tuple[str, subprocess.Popen[str]]] = []
    for name, dsn in _bad_dsns(db).items():
        for command in (
            ["report", "efficiency"],
            ["report", "60day", "--json"],
            ["migrate"],
            ["prune"],
        ):
            runs.append(
                (f"{name}: {command} --dsn", _run_cli([*command, "--dsn", dsn], subprocess_env))
            )
        env = dict(subprocess_env, TOKENTRACE_DSN=dsn)
        runs.append((f"{name}: report footprint (env)", _run_cli(["report", "footprint"], env)))
    for label, process in runs:
        out, err = process.communicate(timeout=120)
        assert process.returncode in (1, 2), (label, process.returncode, out, err)
        assert "Traceback" not in err, (label, err)
        assert err.strip(), label  # it said why
        _no_password(out + err)


def test_help_of_every_command_shows_no_secret(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENTRACE_DSN", _working_dsn(db))
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    monkeypatch.setenv("TOKENTRACE_AUTH_TOKEN", PASSWORD)
    monkeypatch.setenv("TOKENTRACE_READER_PASSWORD", PASSWORD)
    subcommands: Any = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "report", "migrate", "prune", "psql", "demo"} <= set(subcommands)
    for argv in ([], *([name] for name in subcommands), ["report", "efficiency"]):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        assert exit_.value.code == 0
        _no_password(capsys.readouterr().out)


def test_secrets_have_no_command_line_option() -> None:
    """Secrets come from the environment only: a command line is visible to `ps`."""
    parser = build_parser()
    for argv in (
        ["serve", "--auth-token", "x"],
        ["serve", "--token", "x"],
        ["migrate", "--reader-password", "x"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


# --- the reports, with a DSN that works ----------------------------------------------------------
def test_report_outputs_show_no_password(
    db: str, start_receiver: StartReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = _working_dsn(db)
    receiver = start_receiver(dsn=dsn)
    http = Http(receiver.http_port)
    try:
        assert http.post(valid_request(3, salt=22)).status == 200
        bodies = [
            http.get(path).body.decode()
            for path in (
                "/telemetry/efficiency?hours=9600",
                "/telemetry/60day",
                "/telemetry/footprint",
                "/",
            )
        ]
    finally:
        http.close()
    _no_password("\n".join(bodies))
    for argv in (
        ["migrate"],
        ["report", "efficiency", "--hours", "9600"],
        ["report", "efficiency", "--hours", "9600", "--json"],
        ["report", "60day"],
        ["report", "60day", "--json"],
        ["report", "footprint"],
        ["report", "footprint", "--json", "--exact"],
    ):
        assert main([*argv, "--dsn", dsn]) == 0, argv
        captured = capsys.readouterr()
        assert captured.out.strip(), argv
        _no_password(captured.out + captured.err)


# --- `tokentrace serve` as a process ---------------------------------------------------------------
def test_serve_process_stderr_shows_no_password(db: str, subprocess_env: dict[str, str]) -> None:
    servers = {
        "working (--dsn)": ServeProcess(
            [
                "--grpc-endpoint",
                "127.0.0.1:0",
                "--http-endpoint",
                "127.0.0.1:0",
                "--dsn",
                _working_dsn(db),
            ],
            subprocess_env,
        ),
        "no server (env)": ServeProcess(
            ["--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0"],
            dict(subprocess_env, TOKENTRACE_DSN=_bad_dsns(db)["no server"]),
        ),
    }
    try:
        for name, server in servers.items():
            port = int(
                server.wait_for(
                    r"OTLP/HTTP and reports listening on http://127\.0\.0\.1:(\d+)$"
                ).group(1)
            )
            database = server.wait_for(r"database: (.*)$").group(1)
            assert "***" in database, name
            http = Http(port)
            try:
                expected = 200 if name.startswith("working") else 503
                assert http.post(valid_request(1, salt=23)).status == expected, name
                http.get("/telemetry/60day")
            finally:
                http.close()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=60) == 0, name
    finally:
        for server in servers.values():
            server.stop()
    for name, server in servers.items():
        while not server.lines.empty():
            server.log.append(server.lines.get())
        log = "".join(server.log)
        assert "stopped after draining" in log, (name, log)
        _no_password(log)
    assert "database not reachable yet" in "".join(servers["no server (env)"].log)


def test_serve_with_an_unparsable_dsn_exits_2_without_the_password(
    subprocess_env: dict[str, str],
) -> None:
    env = dict(subprocess_env, TOKENTRACE_DSN=_bad_dsns("")["unparsable"])
    process = _run_cli(
        ["serve", "--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0"], env
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert "TOKENTRACE_DSN is not a valid connection string" in err
    _no_password(out + err)
