"""The official OTLP exporters, in another process, over gRPC and HTTP, in every dialect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import query
from tests.integration.receiver.clients import finish_sender, start_sender
from tests.integration.receiver.conftest import StartReceiver

# dialect -> (model, provider, operation, input tokens, output tokens, ms/token, ttft ms)
EXPECTED: dict[str, tuple[str, str, str, int, int, float, float | None]] = {
    "genai_current": ("gpt-4o-mini-2024-07-18", "openai", "chat", 12, 80, 25.0, None),
    "genai_deprecated": ("gpt-4", "openai", "chat", 30, 50, 40.0, None),
    "openllmetry_ollama": ("llama3.2:latest", "ollama", "chat", 26, 100, 20.0, None),
    "openinference": ("mistral-7b-instruct", "ollama", "chat", 5, 40, 50.0, None),
    "openlit": ("qwen2.5:7b", "ollama", "chat", 10, 64, 31.25, 250.0),
}
# Dialect-specific source attributes kept as sent in the attributes column.
KEPT = {
    "openllmetry_ollama": ("llm.usage.total_tokens", "126"),
    "openinference": ("llm.token_count.total", "45"),
    "openlit": ("gen_ai.server.time_to_first_token", "0.25"),
    "genai_deprecated": ("gen_ai.system", "openai"),
    "genai_current": ("gen_ai.provider.name", "openai"),
}

_ROW = """
SELECT model, provider, operation, input_tokens, output_tokens, ms_per_token, ttft_ms,
       duration_ms, kind, service_name, token_source, attributes ->> %s,
       (attributes ->> 'tokentrace.ms_per_token')::float8
FROM tokentrace.spans WHERE trace_id = %s AND span_id = %s
"""


def _assert_rows(dsn: str, results: list[dict[str, Any]], service: str) -> None:
    for result in results:
        assert result["ok"], f"{result['protocol']} export failed"
        for sent in result["spans"]:
            dialect = sent["dialect"]
            key, kept = KEPT[dialect]
            rows = query(
                dsn, _ROW, (key, bytes.fromhex(sent["trace_id"]), bytes.fromhex(sent["span_id"]))
            )
            assert len(rows) == 1, f"{result['protocol']} {dialect}: {len(rows)} rows"
            model, provider, operation, tokens_in, tokens_out, mpt, ttft = EXPECTED[dialect]
            assert rows[0] == (
                model,
                provider,
                operation,
                tokens_in,
                tokens_out,
                mpt,
                ttft,
                2000.0,
                "CLIENT",
                service,
                "reported",
                kept,
                mpt,
            ), dialect


def test_every_dialect_over_grpc_and_http_with_a_bearer_token(
    start_receiver: StartReceiver, db: str, subprocess_env: dict[str, str]
) -> None:
    receiver = start_receiver(auth_token="tok-123")
    headers = {"authorization": "Bearer tok-123"}
    grpc_url, http_url = (
        f"http://127.0.0.1:{receiver.grpc_port}",
        f"http://127.0.0.1:{receiver.http_port}",
    )
    sender = start_sender(
        {
            "service": "dialects-plain",
            "mode": "dialects",
            "targets": [
                {
                    "protocol": "grpc",
                    "endpoint": grpc_url,
                    "compression": "gzip",
                    "headers": headers,
                },
                {
                    "protocol": "grpc",
                    "endpoint": grpc_url,
                    "compression": "none",
                    "headers": headers,
                },
                {
                    "protocol": "http",
                    "endpoint": http_url,
                    "compression": "gzip",
                    "headers": headers,
                },
                {
                    "protocol": "http",
                    "endpoint": http_url,
                    "compression": "none",
                    "headers": headers,
                },
            ],
        },
        subprocess_env,
    )
    results = finish_sender(sender)
    assert [r["protocol"] for r in results] == ["grpc", "grpc", "http", "http"]
    _assert_rows(db, results, "dialects-plain")
    assert query(db, "SELECT count(*) FROM tokentrace.spans")[0][0] == 4 * len(EXPECTED)


def test_every_dialect_over_tls(
    start_receiver: StartReceiver,
    db: str,
    subprocess_env: dict[str, str],
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    receiver = start_receiver(tls_cert=cert, tls_key=key)
    # requests lets these variables override the exporter's certificate_file (psf/requests#3829).
    env = {
        k: v for k, v in subprocess_env.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    sender = start_sender(
        {
            "service": "dialects-tls",
            "mode": "dialects",
            "targets": [
                {
                    "protocol": "grpc",
                    "endpoint": f"https://localhost:{receiver.grpc_port}",
                    "ca": str(cert),
                },
                {
                    "protocol": "http",
                    "endpoint": f"https://localhost:{receiver.http_port}",
                    "ca": str(cert),
                },
            ],
        },
        env,
    )
    _assert_rows(db, finish_sender(sender), "dialects-tls")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_official_exporter_without_the_token_is_refused(
    start_receiver: StartReceiver, db: str, subprocess_env: dict[str, str], protocol: str
) -> None:
    receiver = start_receiver(auth_token="tok-123")
    port = receiver.grpc_port if protocol == "grpc" else receiver.http_port
    sender = start_sender(
        {
            "service": "no-token",
            "mode": "dialects",
            "targets": [
                {
                    "protocol": protocol,
                    "endpoint": f"http://127.0.0.1:{port}",
                    "headers": {"authorization": "Bearer wrong"},
                },
            ],
        },
        subprocess_env,
    )
    out, err = sender.communicate(timeout=60)
    assert sender.returncode == 1, err
    assert '"ok": false' in out
    assert ("UNAUTHENTICATED" if protocol == "grpc" else "401") in err
    assert query(db, "SELECT count(*) FROM tokentrace.spans")[0][0] == 0
