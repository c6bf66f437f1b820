"""`tokentrace serve` settings: argument > environment > default, errors name their source."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tokentrace.config import ConfigError
from tokentrace.receiver import cli
from tokentrace.receiver.settings import Endpoint, parse_endpoint, parse_size, resolve


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    settings = resolve(_args(), environ={})
    assert settings.grpc_endpoint == Endpoint("127.0.0.1", 4317)
    assert settings.http_endpoint == Endpoint("127.0.0.1", 4318)
    assert settings.grpc_max_request_bytes == 4 * 1024 * 1024
    assert settings.http_max_request_bytes == 20 * 1024 * 1024
    assert settings.auth_token is None and settings.dsn is None and not settings.tls
    assert (
        settings.max_inflight == 32
        and settings.db_connections == 4
        and settings.grace_seconds == 20.0
    )
    assert settings.max_value_chars == 65_536
    assert settings.workers == 1 and not settings.reuse_port


def test_workers_from_argument_or_environment() -> None:
    assert resolve(_args(), environ={"TOKENTRACE_SERVE_WORKERS": "3"}).workers == 3
    assert resolve(_args("--workers", "2"), environ={"TOKENTRACE_SERVE_WORKERS": "3"}).workers == 2
    # Only the supervisor turns SO_REUSEPORT on, for its workers.
    assert not resolve(_args("--workers", "2"), environ={}).reuse_port


def test_environment_over_default_and_argument_over_environment() -> None:
    env = {
        "TOKENTRACE_GRPC_ENDPOINT": "0.0.0.0:14317",
        "TOKENTRACE_HTTP_ENDPOINT": "0.0.0.0:14318",
        "TOKENTRACE_GRPC_MAX_REQUEST_BYTES": "8MiB",
        "TOKENTRACE_HTTP_MAX_REQUEST_BYTES": "1048576",
        "TOKENTRACE_SERVE_MAX_INFLIGHT": "7",
        "TOKENTRACE_AUTH_TOKEN": " s3cret ",
        "TOKENTRACE_MAX_ATTRIBUTE_CHARS": "100",
    }
    from_env = resolve(_args(), environ=env)
    assert from_env.grpc_endpoint == Endpoint("0.0.0.0", 14317)
    assert from_env.http_endpoint == Endpoint("0.0.0.0", 14318)
    assert from_env.grpc_max_request_bytes == 8 * 1024 * 1024
    assert from_env.http_max_request_bytes == 1_048_576
    assert from_env.max_inflight == 7
    assert from_env.auth_token == "s3cret"
    assert from_env.max_value_chars == 100
    from_args = resolve(
        _args(
            "--grpc-endpoint",
            "[::1]:0",
            "--http-endpoint",
            "localhost:0",
            "--grpc-max-request-bytes",
            "64KiB",
            "--max-inflight",
            "2",
            "--dsn",
            "postgresql://x",
        ),
        environ=env,
    )
    assert from_args.grpc_endpoint == Endpoint("::1", 0)
    assert str(from_args.grpc_endpoint) == "[::1]:0"
    assert from_args.http_endpoint == Endpoint("localhost", 0)
    assert from_args.grpc_max_request_bytes == 65_536
    assert from_args.max_inflight == 2
    assert from_args.dsn == "postgresql://x"


@pytest.mark.parametrize(
    "argv,env,names",
    [
        (
            (),
            {"TOKENTRACE_GRPC_ENDPOINT": "4317"},
            "TOKENTRACE_GRPC_ENDPOINT='4317' is not HOST:PORT",
        ),
        (
            ("--http-endpoint", "localhost:99999"),
            {},
            "--http-endpoint='localhost:99999': port must be",
        ),
        (
            ("--grpc-endpoint", "http://localhost:4317"),
            {},
            "--grpc-endpoint='http://localhost:4317': give HOST:PORT",
        ),
        (("--grpc-endpoint", "::1:4317"), {}, "write IPv6 addresses in brackets"),
        (("--grpc-endpoint", "[nothost]:4317"), {}, "is not an IPv6 address"),
        (
            (),
            {"TOKENTRACE_HTTP_MAX_REQUEST_BYTES": "lots"},
            "TOKENTRACE_HTTP_MAX_REQUEST_BYTES='lots' is not a size",
        ),
        (
            ("--grpc-max-request-bytes", "3GiB"),
            {},
            "--grpc-max-request-bytes='3GiB' must be between",
        ),
        (("--max-inflight", "0"), {}, "--max-inflight='0' must be at least 1"),
        (
            (),
            {"TOKENTRACE_SERVE_DB_CONNECTIONS": "four"},
            "TOKENTRACE_SERVE_DB_CONNECTIONS='four' is not a whole",
        ),
        (("--grace", "-1"), {}, "--grace='-1' must be zero or more"),
        (("--workers", "0"), {}, "--workers='0' must be at least 1"),
        ((), {"TOKENTRACE_SERVE_WORKERS": "65"}, "--workers (TOKENTRACE_SERVE_WORKERS) must be at most 64"),
        (
            (),
            {"TOKENTRACE_MAX_ATTRIBUTE_CHARS": "x"},
            "TOKENTRACE_MAX_ATTRIBUTE_CHARS='x' is not an integer",
        ),
        (
            ("--tls-cert", "/nonexistent/cert.pem"),
            {},
            "--tls-cert='/nonexistent/cert.pem': no such file",
        ),
    ],
)
def test_bad_values_name_their_source(
    argv: tuple[str, ...], env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(_args(*argv), environ=env)
    assert names in str(info.value)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        resolve(_args("--tls-cert", str(cert)), environ={})
    both = resolve(_args("--tls-cert", str(cert)), environ={"TOKENTRACE_TLS_KEY": str(cert)})
    assert both.tls and both.tls_key == cert


@pytest.mark.parametrize(
    "text,value", [("1024", 1024), ("64KiB", 65536), ("4 MiB", 4 << 20), ("1gib", 1 << 30)]
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text, "x") == value


def test_endpoint_forms() -> None:
    assert parse_endpoint("0.0.0.0:4317", "x") == Endpoint("0.0.0.0", 4317)
    assert parse_endpoint(" [::]:4318 ", "x") == Endpoint("::", 4318)
    assert str(Endpoint("::", 4318)) == "[::]:4318"
    with pytest.raises(ConfigError, match="x=':4317' is not HOST:PORT"):
        parse_endpoint(":4317", "x")


def test_run_reports_a_bad_setting_with_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENTRACE_GRPC_ENDPOINT", "nowhere")
    assert cli.run(_args()) == 2
    assert "TOKENTRACE_GRPC_ENDPOINT='nowhere' is not HOST:PORT" in capsys.readouterr().err
