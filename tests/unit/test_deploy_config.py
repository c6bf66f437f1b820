"""What can be checked about the deployment files without Docker or a Collector.

``docker-compose.yml``, ``Dockerfile``, ``.env.example`` and the Collector configs in
``collector-config/`` are parsed and checked against each other and against
tokentrace's own defaults: pinned images, files that are mounted exist, ports and
endpoints agree (OTLP gRPC 4317, OTLP/HTTP 4318), ``memory_limiter`` first in every
pipeline, every component a pipeline names is defined, secrets only from the
environment, published ports on loopback only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokentrace.receiver.settings import (
    DEFAULT_GRPC_ENDPOINT,
    DEFAULT_GRPC_MAX_REQUEST_BYTES,
    DEFAULT_HTTP_ENDPOINT,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
COLLECTOR_DIR = ROOT / "collector-config"
COLLECTOR_CONFIGS = ("gateway.yaml", "loadbalancing.yaml")

# tokentrace serve's defaults: OTLP gRPC 4317 and OTLP/HTTP 4318.
GRPC_PORT = int(DEFAULT_GRPC_ENDPOINT.rpartition(":")[2])
HTTP_PORT = int(DEFAULT_HTTP_ENDPOINT.rpartition(":")[2])
# What a GenAI span may average on the wire for a full Collector batch to fit the
# receiver's default gRPC request limit (the figure gateway.yaml's comment states).
SPAN_BYTES_BUDGET = 2048
# The contrib release the configs are written for (collector-config/README.md).
COLLECTOR_VERSION = "0.159.0"
COLLECTOR_IMAGE = "otel/opentelemetry-collector-contrib"
# Component types of that release; the deprecated names must not be used.
KNOWN_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch"},
    "exporters": {"otlp_grpc", "otlp_http", "load_balancing", "debug"},
    "extensions": {"file_storage", "health_check"},
}
DEPRECATED_TYPES = {
    "otlp": "otlp_grpc",
    "otlphttp": "otlp_http",
    "loadbalancing": "load_balancing",
    "logging": "debug",
}

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_WORDS = {"password", "passwd", "secret", "token", "authorization", "apikey"}
_COMPOSE_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _load(COMPOSE)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="module", params=COLLECTOR_CONFIGS)
def collector(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    name: str = request.param
    return name, _load(COLLECTOR_DIR / name)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, scalar) in a parsed YAML document."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    else:
        yield path, node


def _is_secret(key: str) -> bool:
    """``PGPASSWORD``, ``TOKENTRACE_AUTH_TOKEN``, ``authorization`` (not ``TOKENTRACE_*``)."""
    words = [w for w in re.split(r"[^a-z]+", key.lower().replace("api_key", "apikey")) if w]
    return any(w in _SECRET_WORDS or w.startswith("pgpass") for w in words)


def _env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _compose_interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` with ``env`` as ``.env``."""

    def one(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if operator.endswith("?"):
            raise AssertionError(f"{name} is required: {rest}")
        return rest

    return _COMPOSE_REF.sub(one, text)


def _scalars_text(config: Any) -> str:
    """The string values of a parsed config, one a line (comments are gone)."""
    return "\n".join(str(v) for _, v in _walk(config) if isinstance(v, str))


def _expand(text: str, env: Mapping[str, str]) -> str:
    """The Collector's ``${env:NAME}`` / ``${env:NAME:-default}`` substitution."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name, "")
        return value if value else (default or "")

    return _ENV_REF.sub(one, text)


def _port(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _collector_service(services: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    found = [s for s in services.values() if str(s.get("image", "")).startswith(COLLECTOR_IMAGE)]
    assert len(found) == 1, "docker-compose.yml should run exactly one Collector"
    return found[0]


def _tokentrace_services(services: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if "build" in s}


# --- images ---------------------------------------------------------------------------
def test_every_image_is_pinned_to_an_explicit_tag(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"service {name} names no image (a built image needs a tag too)"
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert repo and tag, f"service {name}: image {image!r} has no explicit tag"
        assert tag != "latest", f"service {name}: image {image!r} uses 'latest'"


def test_collector_image_is_the_release_the_configs_are_written_for(
    services: dict[str, dict[str, Any]],
) -> None:
    assert _collector_service(services)["image"] == f"{COLLECTOR_IMAGE}:{COLLECTOR_VERSION}"
    for name in COLLECTOR_CONFIGS:
        text = (COLLECTOR_DIR / name).read_text(encoding="utf-8")
        assert f"otelcol-contrib {COLLECTOR_VERSION}" in text, f"{name} does not say its version"
    readme = (COLLECTOR_DIR / "README.md").read_text(encoding="utf-8")
    assert f"{COLLECTOR_IMAGE}:{COLLECTOR_VERSION}" in readme


def test_postgres_is_a_pinned_supported_major(services: dict[str, dict[str, Any]]) -> None:
    image = services["postgres"]["image"]
    match = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", image)
    assert match, f"postgres image {image!r} should be pinned to a major version"
    assert int(match.group(1)) >= 14, "tokentrace needs PostgreSQL 14 or later"


def test_dockerfile_base_is_pinned_and_runs_tokentrace_as_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert bases, "the base image is an ARG with a default"
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", bases[0])
    for line in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
        assert line == "${PYTHON_IMAGE}", f"FROM {line} bypasses the pinned base"
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the image must not run as root"
    assert re.search(r'^ENTRYPOINT \["tokentrace"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["serve"\]$', text, re.MULTILINE)
    assert f"TOKENTRACE_GRPC_ENDPOINT=0.0.0.0:{GRPC_PORT}" in text
    assert f"TOKENTRACE_HTTP_ENDPOINT=0.0.0.0:{HTTP_PORT}" in text
    assert re.search(rf"^EXPOSE {GRPC_PORT} {HTTP_PORT}$", text, re.MULTILINE)


def test_dockerfile_healthcheck_uses_python_stdlib_on_healthz() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    check = re.search(r"^HEALTHCHECK .*?CMD (\[[^\n]*\])$", text, re.MULTILINE | re.DOTALL)
    assert check, "no HEALTHCHECK ... CMD [...]"
    command = yaml.safe_load(check.group(1))  # exec form is a JSON array
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2] and "/healthz" in command[2]
    assert not re.search(r"\b(curl|wget)\b", command[2])
    compile(command[2], "<healthcheck>", "exec")


def test_dockerignore_keeps_secrets_and_history_out_of_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored and ".git" in ignored


# --- compose --------------------------------------------------------------------------
def test_files_mounted_into_containers_exist(services: dict[str, dict[str, Any]]) -> None:
    mounts = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = (
                volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            )
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name} mounts missing {source}"
                mounts += 1
    assert mounts, "the Collector config should be mounted from the repository"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"
    assert any(
        v.endswith(":/var/lib/postgresql/data") for v in compose["services"]["postgres"]["volumes"]
    )


def test_published_ports_are_bound_to_loopback(services: dict[str, dict[str, Any]]) -> None:
    seen: set[str] = set()
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write ports as 'IP:HOST:CONTAINER' strings"
            resolved = _compose_interpolate(port, _env_example())
            ip, host, container = resolved.split(":")
            assert ip == "127.0.0.1", f"{name} publishes {port!r} beyond loopback"
            assert host.isdigit() and container.isdigit(), f"{name}: {port!r}"
            assert host not in seen, f"host port {host} is published twice"
            seen.add(host)


def test_collector_ports_agree_with_its_receivers_and_with_tokentrace(
    services: dict[str, dict[str, Any]],
) -> None:
    collector = _collector_service(services)
    env = _environment(collector)
    command = " ".join(collector["command"])
    mounted = {v.split(":")[1]: v.split(":")[0] for v in collector["volumes"] if v.startswith("./")}
    config_path = re.search(r"--config=(\S+)", command)
    assert config_path and config_path.group(1) in mounted
    config = _load(ROOT / mounted[config_path.group(1)])
    protocols = config["receivers"]["otlp"]["protocols"]
    grpc = _expand(protocols["grpc"]["endpoint"], env)
    http = _expand(protocols["http"]["endpoint"], env)
    assert grpc == f"0.0.0.0:{GRPC_PORT}" and http == f"0.0.0.0:{HTTP_PORT}"
    published = {int(p.split(":")[2]) for p in collector["ports"]}
    assert published == {GRPC_PORT, HTTP_PORT}

    # The exporter points at a tokentrace service's gRPC port.
    exporter = next(v for k, v in config["exporters"].items() if k.startswith("otlp_grpc"))
    target = _expand(exporter["endpoint"], env)
    host, _, port = target.rpartition(":")
    assert host in _tokentrace_services(services), f"{target} is not a tokentrace service"
    serve_env = _environment(services[host])
    assert int(port) == _port(serve_env.get("TOKENTRACE_GRPC_ENDPOINT", f"0.0.0.0:{GRPC_PORT}"))
    assert int(port) == GRPC_PORT


def test_collector_gets_every_variable_its_config_requires(
    services: dict[str, dict[str, Any]],
) -> None:
    collector = _collector_service(services)
    env = _environment(collector)
    text = _scalars_text(_load(COLLECTOR_DIR / "gateway.yaml"))
    required = {m.group(1) for m in _ENV_REF.finditer(text) if m.group(2) is None}
    assert required, "gateway.yaml should take its endpoint and token from the environment"
    assert required <= set(env), f"compose does not set {sorted(required - set(env))}"


def test_tokentrace_serve_waits_for_the_one_shot_migration(
    services: dict[str, dict[str, Any]],
) -> None:
    serve = next(
        s for s in _tokentrace_services(services).values() if s.get("command") == ["serve"]
    )
    migrate = next(
        (n, s) for n, s in _tokentrace_services(services).items() if s.get("command") == ["migrate"]
    )
    assert serve["depends_on"][migrate[0]]["condition"] == "service_completed_successfully"
    assert migrate[1]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate[1].get("restart") == "no"
    assert "healthcheck" in services["postgres"]


def test_secrets_come_from_env_file_not_from_the_compose_file(
    services: dict[str, dict[str, Any]],
) -> None:
    example_vars = _env_example()
    checked = 0
    for name, service in services.items():
        for key, value in _environment(service).items():
            if _is_secret(key):
                checked += 1
                match = re.fullmatch(r"\$\{([A-Z_][A-Z0-9_]*)(?::\?[^}]*)?\}", value)
                assert match, f"{name}: {key} must come from .env, not be written in the file"
                assert match.group(1) in example_vars, f"{match.group(1)} missing from .env.example"
                assert "change-me" in example_vars[match.group(1)], (
                    ".env.example holds a real secret?"
                )
    assert checked >= 3, "the database password and the bearer token should be checked"


def test_env_example_lists_every_variable_compose_reads() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    listed = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    assert used <= listed, f".env.example misses {sorted(used - listed)}"


# --- collector configs ----------------------------------------------------------------
def test_memory_limiter_is_first_in_every_pipeline(collector: tuple[str, dict[str, Any]]) -> None:
    name, config = collector
    pipelines = config["service"]["pipelines"]
    assert pipelines, f"{name} has no pipeline"
    for pipeline_id, pipeline in pipelines.items():
        processors = pipeline.get("processors") or []
        assert processors and processors[0].split("/")[0] == "memory_limiter", (
            f"{name}: pipeline {pipeline_id} must start with memory_limiter"
        )


def test_every_component_a_pipeline_uses_is_defined(collector: tuple[str, dict[str, Any]]) -> None:
    name, config = collector
    service = config["service"]
    for pipeline_id, pipeline in service["pipelines"].items():
        assert pipeline_id.split("/")[0] == "traces", "tokentrace stores traces only"
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind) or []:
                assert component in (config.get(kind) or {}), (
                    f"{name}: {pipeline_id} uses {kind[:-1]} {component!r} that is not defined"
                )
    for extension in service.get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"{name}: undefined {extension}"
    for path, value in _walk(config):
        if path.endswith("sending_queue.storage"):
            assert value in service.get("extensions", []), f"{name}: {value} is not enabled"


def test_component_types_are_current_names(collector: tuple[str, dict[str, Any]]) -> None:
    name, config = collector
    for kind, known in KNOWN_TYPES.items():
        for component in config.get(kind) or {}:
            ctype = component.split("/")[0]
            if kind == "exporters" and ctype in DEPRECATED_TYPES:
                pytest.fail(
                    f"{name}: exporter {component!r} uses a deprecated type; "
                    f"use {DEPRECATED_TYPES[ctype]!r} in {COLLECTOR_VERSION}"
                )
            assert ctype in known, f"{name}: unexpected {kind[:-1]} type {ctype!r}"


def test_receivers_default_to_loopback_on_tokentrace_ports(
    collector: tuple[str, dict[str, Any]],
) -> None:
    name, config = collector
    protocols = config["receivers"]["otlp"]["protocols"]
    assert _expand(protocols["grpc"]["endpoint"], {}) == f"localhost:{GRPC_PORT}", name
    assert _expand(protocols["http"]["endpoint"], {}) == f"localhost:{HTTP_PORT}", name


def test_secrets_and_endpoints_come_from_the_environment(
    collector: tuple[str, dict[str, Any]],
) -> None:
    name, config = collector
    text = _scalars_text(config)
    # Only the env provider's syntax: bare ${VAR} / $VAR were removed from the Collector.
    for ref in re.findall(r"\$\{([^}]*)\}", text):
        assert ref.startswith("env:"), f"{name}: ${{{ref}}} is not an ${{env:...}} reference"
    assert not re.search(r"(?<![$\w])\$[A-Za-z_]", text), f"{name}: bare $VAR reference"
    secrets = [(p, v) for p, v in _walk(config) if _is_secret(p.rsplit(".", 1)[-1])]
    assert secrets, f"{name} should send tokentrace's bearer token"
    for path, value in secrets:
        assert re.fullmatch(r"(Bearer )?\$\{env:[A-Z_][A-Z0-9_]*\}", str(value)), (
            f"{name}: {path} must be an ${{env:...}} reference without a default"
        )
    for path, value in _walk(config):
        if path.endswith(("exporters.otlp_grpc/tokentrace.endpoint", "resolver.dns.hostname")):
            assert _ENV_REF.fullmatch(str(value)), (
                f"{name}: {path} should come from the environment"
            )


def test_gateway_retries_and_queues_on_disk() -> None:
    config = _load(COLLECTOR_DIR / "gateway.yaml")
    exporters = [v for k, v in config["exporters"].items() if k.startswith("otlp_grpc")]
    assert len(exporters) == 1
    exporter = exporters[0]
    assert exporter["retry_on_failure"]["enabled"] is True
    queue = exporter["sending_queue"]
    assert queue["enabled"] is True
    assert queue["storage"].split("/")[0] == "file_storage"
    assert config["extensions"][queue["storage"]]["create_directory"] is True
    processors = config["service"]["pipelines"]["traces"]["processors"]
    assert processors == ["memory_limiter", "batch"]


def test_load_balancing_routes_by_trace_id() -> None:
    config = _load(COLLECTOR_DIR / "loadbalancing.yaml")
    exporter = config["exporters"]["load_balancing"]
    assert exporter["routing_key"] == "traceID"
    assert "endpoint" not in exporter["protocol"]["otlp"], "the resolver sets each endpoint"
    resolver = exporter["resolver"]
    assert set(resolver) & {"static", "dns", "k8s"}
    if "dns" in resolver:
        assert _expand(str(resolver["dns"]["port"]), {}) == str(GRPC_PORT)
    assert exporter["retry_on_failure"]["enabled"] is True


def test_batches_fit_the_receivers_request_limit(services: dict[str, dict[str, Any]]) -> None:
    """A refused over-size request is RESOURCE_EXHAUSTED, which a Collector drops."""
    assert (GRPC_PORT, HTTP_PORT) == (4317, 4318)
    for name in COLLECTOR_CONFIGS:
        config = _load(COLLECTOR_DIR / name)
        batch = config["processors"]["batch"]
        assert batch["send_batch_max_size"] >= batch["send_batch_size"] > 0, name
        assert batch["send_batch_max_size"] * SPAN_BYTES_BUDGET <= DEFAULT_GRPC_MAX_REQUEST_BYTES, (
            name
        )
    serve_env = _environment(services["tokentrace"])
    limit = serve_env.get("TOKENTRACE_GRPC_MAX_REQUEST_BYTES")
    if limit is not None:
        assert (
            parse_size(limit, "TOKENTRACE_GRPC_MAX_REQUEST_BYTES") >= DEFAULT_GRPC_MAX_REQUEST_BYTES
        )
