"""``tokentrace demo``: a simulated fleet, through the real pipeline.

Four models of different speeds serve calls over the last two weeks (a cold load
first, and another cold load before the last few hours of traffic), with
Ollama-style server timings (prefill and decode) on each call and one call that
fails. One model has become slower in the last hours, so the trend reports show a
regression against its baseline. The spans are real OpenTelemetry spans with
explicit timestamps (nothing sleeps), sent through
:class:`~tokentrace.processor.TokenEfficiencySpanProcessor`, a
``BatchSpanProcessor`` and :class:`~tokentrace.exporter.PostgresSpanExporter` into
the database, exactly as an instrumented application's would be.

Output: what the demo did goes to stdout; its progress goes to one status line on
stderr, redrawn in place on a terminal (elsewhere only its finished line is
written). Log records never land inside that line: while the demo runs, the
root logger's handlers that write to the terminal erase the line, write the record
on a line of its own and draw the line again (:class:`StatusLine`). ``tokentrace
demo`` shows tokentrace's INFO logs (the schema's migrations, the embedded server
starting) only with ``-v``; warnings always.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from tokentrace import attributes as A
from tokentrace.pipeline import default_span_processor

_NS = 1_000_000_000


@dataclass(frozen=True)
class SimModel:
    name: str
    provider: str
    decode_ms: float  # per output token
    prefill_ms: float  # per input token
    load_s: float  # cold load
    recent_slowdown: float = 1.0  # > 1: slower in the last hours than in its history


FLEET = (
    SimModel("llama3.2:3b", "ollama", decode_ms=11.0, prefill_ms=0.6, load_s=1.8),
    SimModel("qwen2.5:7b", "ollama", decode_ms=24.0, prefill_ms=1.2, load_s=3.5, recent_slowdown=1.3),
    SimModel("mistral:7b-instruct", "vllm", decode_ms=19.0, prefill_ms=0.9, load_s=4.2),
    SimModel("llama3.1:70b", "ollama", decode_ms=85.0, prefill_ms=4.0, load_s=21.0),
)


_ERASE = "\r\x1b[K"  # to the line's start, then clear it (ANSI erase-in-line)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class StatusLine:
    """One transient line of progress on ``stream``, kept apart from all other output.

    On a terminal :meth:`show` redraws the line in place; anything else written
    meanwhile goes through :meth:`interrupt`, which erases the line first and draws
    it again after, so it gets lines of its own. On a pipe or a file only
    :meth:`finish` writes (a whole line), so nothing can share a line with it there.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _is_terminal(self.stream)
        self._text = ""  # what the line shows now; "" when none is drawn
        self._lock = threading.RLock()  # the exporter's thread logs while the demo draws

    def show(self, text: str) -> None:
        with self._lock:
            self._text = text
            if self.terminal:
                self._write(_ERASE + text)

    def finish(self, text: str | None = None) -> None:
        """End the line: leave ``text`` (or what it shows) on it, then a newline."""
        with self._lock:
            final = self._text if text is None else text
            self._text = ""
            self._write((_ERASE if self.terminal else "") + final + "\n")

    def clear(self) -> None:
        """Take the line away (on a terminal), leaving nothing of it."""
        with self._lock:
            if self.terminal and self._text:
                self._write(_ERASE)
            self._text = ""

    @contextmanager
    def interrupt(self) -> Iterator[None]:
        """Around other output to the same terminal: the line steps aside for it."""
        with self._lock:
            drawn = self.terminal and bool(self._text)
            if drawn:
                self._write(_ERASE)
            try:
                yield
            finally:
                if drawn:
                    self._write(self._text)

    def print(self, *values: Any, file: TextIO | None = None) -> None:
        """``print()`` to ``file`` (stdout) on a line of its own."""
        with self.interrupt():
            print(*values, file=file if file is not None else sys.stdout, flush=True)

    @contextmanager
    def routing_logs(self) -> Iterator[None]:
        """While in it, the root logger's handlers that write to stdout or stderr
        write through :meth:`interrupt` (each wrapped in its place, then put back)."""
        handlers = logging.getLogger().handlers
        streams = {id(s) for s in (self.stream, sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
        wrapped: list[_Interrupting] = []
        for index, handler in enumerate(handlers):
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in streams:
                wrapper = _Interrupting(handler, self)
                handlers[index] = wrapper  # in place: the handlers' order stays
                wrapped.append(wrapper)
        try:
            yield
        finally:
            for wrapper in wrapped:
                if wrapper in handlers:  # unless someone removed it meanwhile
                    handlers[handlers.index(wrapper)] = wrapper.inner

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class _Interrupting(logging.Handler):
    """``inner`` (its level, filters, format and lock unchanged), with the status line
    stepping aside for each record."""

    def __init__(self, inner: logging.Handler, status: StatusLine) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.status = status

    def handle(self, record: logging.LogRecord) -> bool:
        with self.status.interrupt():
            return bool(self.inner.handle(record))


def _progress(status: StatusLine, done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    text = f"  [{bar}] {done:4d}/{total} {label}"
    if done >= total:
        status.finish(text)
    else:
        status.show(text)


def _load(tracer: Tracer, model: SimModel, start_ns: int, rng: random.Random) -> int:
    duration = int(model.load_s * rng.uniform(0.9, 1.2) * _NS)
    span = tracer.start_span(
        f"{A.OP_LOAD_MODEL} {model.name}",
        kind=SpanKind.CLIENT,
        start_time=start_ns,
        attributes={
            A.GEN_AI_OPERATION_NAME: A.OP_LOAD_MODEL,
            A.GEN_AI_REQUEST_MODEL: model.name,
            A.GEN_AI_PROVIDER_NAME: model.provider,
        },
    )
    span.end(end_time=start_ns + duration)
    return start_ns + duration


def _call(
    tracer: Tracer, model: SimModel, start_ns: int, rng: random.Random, fail: bool, slowdown: float
) -> None:
    prompt = rng.randint(20, 900)
    output = rng.randint(16, 600)
    jitter = rng.lognormvariate(0, 0.15) * slowdown
    prefill_ns = int(prompt * model.prefill_ms * jitter * 1e6)
    eval_ns = int(output * model.decode_ms * jitter * 1e6)
    overhead_ns = int(rng.uniform(3, 25) * 1e6)
    span = tracer.start_span(
        f"{A.OP_CHAT} {model.name}",
        kind=SpanKind.CLIENT,
        start_time=start_ns,
        attributes={
            A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
            A.GEN_AI_REQUEST_MODEL: model.name,
            A.GEN_AI_RESPONSE_MODEL: model.name,
            A.GEN_AI_PROVIDER_NAME: model.provider,
            A.SERVER_ADDRESS: "127.0.0.1",
            A.SERVER_PORT: 11434 if model.provider == "ollama" else 8000,
        },
    )
    if fail:
        span.set_attribute(A.ERROR_TYPE, "timeout")
        span.set_status(Status(StatusCode.ERROR, "request timed out after 30 s"))
        span.end(end_time=start_ns + 30 * _NS)
        return
    span.set_attributes(
        {
            A.GEN_AI_USAGE_INPUT_TOKENS: prompt,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: output,
            A.TT_SERVER_PROMPT_EVAL_NS: prefill_ns,
            A.TT_SERVER_EVAL_NS: eval_ns,
            A.TT_SERVER_TOTAL_NS: prefill_ns + eval_ns,
            A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        }
    )
    span.end(end_time=start_ns + prefill_ns + eval_ns + overhead_ns)


def _history(tracer: Tracer, model: SimModel, now: int, days: int, per_day: int, rng: random.Random) -> int:
    if days <= 0:
        return 0
    t = _load(tracer, model, now - days * 86_400 * _NS, rng)
    for day in range(days, 0, -1):
        day_start = now - day * 86_400 * _NS
        for offset in sorted(rng.uniform(0, 86_000) for _ in range(per_day)):
            _call(tracer, model, max(day_start + int(offset * _NS), t), rng, fail=False, slowdown=1.0)
    return 1 + days * per_day


def run_demo(
    dsn: str,
    *,
    calls_per_model: int = 60,
    seed: int = 7,
    hours: float = 6.0,
    history_days: int = 14,
    status: StatusLine | None = None,
) -> int:
    """Send the simulated fleet's spans to ``dsn``; returns the number of spans sent.

    Each model gets ``calls_per_model`` calls over the last ``hours`` (after a cold
    load), and before that ``history_days`` days of lighter traffic. Progress is
    drawn on ``status`` (default: a new one on stderr).
    """
    line = status if status is not None else StatusLine()
    with line.routing_logs():
        return _run(dsn, calls_per_model, seed, hours, history_days, line)


def _run(
    dsn: str, calls_per_model: int, seed: int, hours: float, history_days: int, status: StatusLine
) -> int:
    rng = random.Random(seed)
    processor = default_span_processor(dsn)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tokentrace-demo"}), shutdown_on_exit=False
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tokentrace.demo")
    now = time.time_ns()
    window = int(hours * 3600 * _NS)
    total = len(FLEET) * calls_per_model
    sent = done = 0
    failing = (rng.randrange(len(FLEET)), rng.randrange(calls_per_model))
    status.print(
        f"Simulating {len(FLEET)} models: {calls_per_model} calls each over the last {hours:g} hours"
        + (f", after {history_days} days of history" if history_days > 0 else "")
    )
    for m_index, model in enumerate(FLEET):
        sent += _history(tracer, model, now - window, history_days, 8, rng)
        t = now - window + rng.randint(0, 600) * _NS
        t = _load(tracer, model, t, rng)
        sent += 1
        step = (now - t) // (calls_per_model + 1)
        for c_index in range(calls_per_model):
            # Evenly spread up to the present, so even a 1-hour window has traffic.
            t += int(step * rng.uniform(0.8, 1.2))
            fail = (m_index, c_index) == failing
            _call(tracer, model, t, rng, fail=fail, slowdown=model.recent_slowdown)
            sent += 1
            done += 1
            if done % 10 == 0 or done == total:
                _progress(status, done, total, model.name)
    # The exporter may create the schema now (its first export), logging as it goes.
    status.show("  exporting spans to PostgreSQL ...")
    provider.shutdown()
    status.clear()
    status.print(f"Sent {sent} spans (1 failed call) to PostgreSQL")
    return sent
