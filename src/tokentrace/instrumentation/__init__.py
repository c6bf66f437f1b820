"""Auto-instrumentation of model clients: one line, or no code at all.

One line::

    import tokentrace
    tokentrace.instrument()      # every installed client below, spans → PostgreSQL

No code::

    pip install opentelemetry-distro
    OTEL_TRACES_EXPORTER=tokentrace OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \\
        opentelemetry-instrument python app.py

* ``OllamaInstrumentor`` (entry point ``tokentrace_ollama``): ``ollama`` generate,
  chat, embed and embeddings, sync and async, streamed or not.
* ``OpenAIInstrumentor`` (``tokentrace_openai``): ``openai`` chat completions,
  completions and embeddings against any OpenAI-compatible server.
* ``TransformersInstrumentor`` (``tokentrace_transformers``): ``from_pretrained``
  (a ``load_model`` span) and ``generate`` in process.

Each is an OpenTelemetry ``BaseInstrumentor``; the module of each documents what
its spans carry. A library is patched when it is imported (at once if it already
is), so instrumenting an installed but unused library costs no import time.
Prompt and completion text is recorded only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
"""

from __future__ import annotations

import logging
from importlib import import_module, util

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from tokentrace.instrumentation.patching import BaseInstrumentor

__all__ = ["instrument", "instrumentors"]

_log = logging.getLogger(__name__)

# (name, library module, instrumentor module, class)
_KNOWN = (
    ("ollama", "ollama", "tokentrace.instrumentation.ollama", "OllamaInstrumentor"),
    ("openai", "openai", "tokentrace.instrumentation.openai", "OpenAIInstrumentor"),
    (
        "transformers",
        "transformers",
        "tokentrace.instrumentation.transformers",
        "TransformersInstrumentor",
    ),
)


def _installed(module: str) -> bool:
    try:
        return util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def instrumentors() -> dict[str, BaseInstrumentor]:
    """The instrumentor of each supported library that is installed, by name."""
    found: dict[str, BaseInstrumentor] = {}
    for name, library, module, class_name in _KNOWN:
        if _installed(library):
            cls = getattr(import_module(module), class_name)
            found[name] = cls()
    return found


def instrument(dsn: str | None = None) -> list[str]:
    """Instrument every supported library that is installed; return their names.

    When the application has not set an SDK ``TracerProvider``, tokentrace sets one
    up first (:func:`tokentrace.configure`): spans go through the efficiency
    processor to PostgreSQL at ``dsn`` (else ``TOKENTRACE_DSN``, else the embedded
    server). With a provider already set, spans go wherever it sends them. Calling
    it again instruments nothing twice.
    """
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        from tokentrace.pipeline import configure

        configure(dsn)
    done = []
    for name, instrumentor in instrumentors().items():
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
        if instrumentor.is_instrumented_by_opentelemetry:
            done.append(name)
        else:
            _log.warning("tokentrace: %s is installed but could not be instrumented", name)
    return done
