# syntax=docker/dockerfile:1
#
# tokentrace: `tokentrace serve` (OTLP gRPC :4317, OTLP/HTTP + reports :4318) in a
# small image, run as a non-root user.
#
#   docker build -t tokentrace:0.1.0 .
#   docker run --rm -p 127.0.0.1:4317:4317 -p 127.0.0.1:4318:4318 \
#       -e TOKENTRACE_DSN=postgresql://user:pass@db.example:5432/tokentrace tokentrace:0.1.0
#
# Other commands use the same image: `docker run … tokentrace:0.1.0 migrate`.
# Note: the `pgserver` dependency ships linux/amd64 wheels only, so build for
# linux/amd64 (docker-compose.yml says so; on arm64 hosts it runs under emulation).

ARG PYTHON_IMAGE=python:3.12-slim-trixie

# --- build: install the package and its dependencies into a virtualenv ------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/tokentrace
# Only what the wheel needs: pyproject.toml, the readme it names, the package.
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/tokentrace/bin/pip install . \
 && /opt/tokentrace/bin/pip uninstall --yes pip

# --- runtime ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tokentrace \
 && useradd --system --uid 10001 --gid tokentrace --home-dir /var/lib/tokentrace \
        --create-home --shell /usr/sbin/nologin tokentrace
COPY --from=build /opt/tokentrace /opt/tokentrace

# Listen on every interface *inside* the container (the process default is loopback,
# which nothing outside the container could reach); publish the ports on the host's
# 127.0.0.1 unless the receiver is meant to be reachable from other machines.
# TOKENTRACE_DATA_DIR is used only when no database is configured (embedded PostgreSQL).
ENV PATH=/opt/tokentrace/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOKENTRACE_GRPC_ENDPOINT=0.0.0.0:4317 \
    TOKENTRACE_HTTP_ENDPOINT=0.0.0.0:4318 \
    TOKENTRACE_DATA_DIR=/var/lib/tokentrace/pgdata

USER 10001:10001
WORKDIR /var/lib/tokentrace
EXPOSE 4317 4318

# Python's standard library only: the slim image has no curl or wget. The port is
# the one TOKENTRACE_HTTP_ENDPOINT names; an HTTP error or no answer exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('TOKENTRACE_HTTP_ENDPOINT', '0.0.0.0:4318').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["tokentrace"]
CMD ["serve"]
