"""Which model, now? The expected latency of a request, per model, fastest first.

A dispatcher that routes each request to the model that will answer it soonest asks
one question: *for a request of P prompt tokens and about O output tokens, how long
will each model take right now, and is it loaded?* :func:`expected_latency` answers
it from ``tokentrace.expected_latency()`` (``sql/0130_expected_latency.sql``), which
fits, per model, ``ms = intercept + prefill·P + decode·O`` by least squares over the
rollups (no raw spans read: the same cost at 1 M or 100 M spans), weighting recent
calls more (half-life 30 minutes), and adds a cold model's expected load time::

    from tokentrace.expected import expected_latency

    for e in expected_latency(None, prompt_tokens=800, output_tokens=200):
        print(e.rank, e.model, e.expected_ms, e.warm, e.trusted, e.reason)

    best = expected_latency(dsn, 800, 200, models=["llama3.2", "qwen2.5:7b"])[0]

Each :class:`Estimate` carries the expected ms and a p90, whether the model is likely
loaded (``warm``: within the keep-alive its calls asked for, else Ollama's 5-minute
default), the load a cold start costs, the fitted ms per prompt and output token, the
calls behind the estimate, and ``trusted`` with a ``reason`` when not: ``"thin"``
(the recent calls weigh less than 5), ``"stale"`` (no call in the last 6 hours) or
``"unseen"`` (a model asked for that sent nothing in 14 days; it ranks last, never
first). ``docs/routing.md`` explains the fit, the cold threshold and the trust rules.

The same answer is ``GET /telemetry/expected-latency`` (:func:`parse_query` reads
its parameters), ``tokentrace route`` and the dashboard's "Which model, now?" panel.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tokentrace import httpkit
from tokentrace.reports import ReportError, report_connection
from tokentrace.store.connection import resolve_dsn

MAX_TOKENS = 10_000_000
"""The largest token count a request may state (no model reads or writes more)."""
MAX_MODELS = 100
MAX_MODEL_CHARS = 512
DEFAULT_HALF_LIFE = dt.timedelta(minutes=30)
QUERY_PARAMETERS = ("prompt_tokens", "output_tokens", "model", "at", "half_life_minutes")

__all__ = [
    "DEFAULT_HALF_LIFE",
    "Estimate",
    "ExpectedLatencyError",
    "MAX_TOKENS",
    "answer",
    "estimates",
    "require_known",
    "expected_latency",
    "parse_query",
]


class ExpectedLatencyError(ReportError):
    """A request size, model list or time that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Estimate:
    """One model's expected latency for the request asked about; see ``docs/routing.md``."""

    rank: int
    model: str
    expected_ms: float | None
    p90_ms: float | None
    warm: bool
    expected_load_ms: float | None
    prefill_ms_per_token: float | None
    decode_ms_per_token: float | None
    calls: int
    trusted: bool
    reason: str | None
    # What the estimate is made of.
    warm_ms: float | None = None  # intercept + prefill·P + decode·O: the time once loaded
    intercept_ms: float | None = None
    switch_cost_ms: float | None = None  # 0 when warm, else expected_load_ms
    effective_calls: float | None = None  # (Σw)²/Σw² of the recency weights
    cold_calls: int = 0
    loads: int = 0
    last_call: dt.datetime | None = None
    last_load: dt.datetime | None = None
    keep_alive_s: float | None = None  # in force; negative: forever
    resident_until: dt.datetime | None = None  # None: no expiry known (or forever)
    residency: str | None = None  # "keep_alive", "ollama_default", "no_expiry"
    method: str | None = None  # "least_squares", "least_squares_prompt", "least_squares_output", "ratios"

    def to_json(self) -> dict[str, Any]:
        """The estimate as JSON-ready data: times as ISO 8601 in UTC."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, dt.datetime):
                out[key] = value.astimezone(dt.timezone.utc).isoformat()
        return out


def check_tokens(name: str, value: Any) -> int:
    """A token count: a whole number from 0 to :data:`MAX_TOKENS` (else :class:`ExpectedLatencyError`)."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        number = int(value.strip())
    if number is None:
        raise ExpectedLatencyError(f"{name} must be a whole number of tokens, not {value!r}")
    if not 0 <= number <= MAX_TOKENS:
        raise ExpectedLatencyError(f"{name} must be from 0 to {MAX_TOKENS:,}, not {number:,}")
    return number


def check_models(models: Iterable[str] | None) -> list[str] | None:
    """The model names asked about, stripped and without repeats; None for every model."""
    if models is None:
        return None
    if isinstance(models, str):
        raise ExpectedLatencyError("models must be a list of model names, not one string")
    names: list[str] = []
    for name in models:
        if not isinstance(name, str) or not name.strip():
            raise ExpectedLatencyError(f"a model name must be non-empty text, not {name!r}")
        if len(name) > MAX_MODEL_CHARS:
            raise ExpectedLatencyError(f"model name longer than {MAX_MODEL_CHARS} characters")
        if name.strip() not in names:
            names.append(name.strip())
    if len(names) > MAX_MODELS:
        raise ExpectedLatencyError(f"at most {MAX_MODELS} models, not {len(names)}")
    return names


def _check_at(at: dt.datetime | None) -> dt.datetime | None:
    if at is None:
        return None
    if not isinstance(at, dt.datetime):
        raise ExpectedLatencyError(f"at must be a datetime, not {at!r}")
    if at.tzinfo is None:
        raise ExpectedLatencyError("at must be an aware datetime (with a time zone)")
    return at


def _check_half_life(half_life: dt.timedelta | None) -> dt.timedelta:
    if half_life is None:
        return DEFAULT_HALF_LIFE
    if not isinstance(half_life, dt.timedelta) or half_life <= dt.timedelta(0):
        raise ExpectedLatencyError(f"half_life must be a positive timedelta, not {half_life!r}")
    return half_life


def _estimate(row: Mapping[str, Any]) -> Estimate:
    return Estimate(**{**row, "calls": int(row["calls"] or 0), "cold_calls": int(row["cold_calls"] or 0),
                       "loads": int(row["loads"] or 0)})  # fmt: skip


def estimates(
    conn: psycopg.Connection[Any],
    prompt_tokens: int,
    output_tokens: int,
    models: Sequence[str] | None = None,
    at: dt.datetime | None = None,
    *,
    half_life: dt.timedelta | None = None,
) -> list[Estimate]:
    """:func:`expected_latency` on an open connection (a report connection, a pool's)."""
    p = check_tokens("prompt_tokens", prompt_tokens)
    o = check_tokens("output_tokens", output_tokens)
    names = check_models(models)
    moment = _check_at(at)
    hl = _check_half_life(half_life)
    query = (
        "SELECT * FROM tokentrace.expected_latency(%s, %s, %s, coalesce(%s, now()), %s)"
    )
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, (p, o, names, moment, hl))
            rows = cur.fetchall()
    except psycopg.errors.InvalidParameterValue as exc:  # SQLSTATE 22023: the function's own checks
        raise ExpectedLatencyError(exc.diag.message_primary or str(exc)) from None
    return [_estimate(row) for row in rows]


def expected_latency(
    dsn: str | None,
    prompt_tokens: int,
    output_tokens: int,
    models: Sequence[str] | None = None,
    at: dt.datetime | None = None,
    *,
    half_life: dt.timedelta | None = None,
) -> list[Estimate]:
    """Per model, fastest first: how long a request of this size takes at ``at`` (default now).

    ``dsn`` None is the configured store (``TOKENTRACE_DSN``, the ``PG*`` variables,
    else the embedded PostgreSQL), as the reports use. ``models`` limits the answer
    to those names (each one asked for gets a row: ``reason="unseen"`` when it sent
    nothing); None ranks every model seen in the last 14 days. ``half_life`` (default
    30 minutes) is how fast old calls stop counting. Bad input raises
    :class:`ExpectedLatencyError` (a ``ValueError``) before any query.
    """
    p = check_tokens("prompt_tokens", prompt_tokens)
    o = check_tokens("output_tokens", output_tokens)
    names = check_models(models)
    moment = _check_at(at)
    hl = _check_half_life(half_life)
    with report_connection(resolve_dsn(dsn)) as conn:
        return estimates(conn, p, o, names, moment, half_life=hl)


@dataclass(frozen=True)
class Query:
    """The parameters of ``GET /telemetry/expected-latency``, checked."""

    prompt_tokens: int
    output_tokens: int
    models: list[str] | None
    at: dt.datetime | None
    half_life: dt.timedelta


def parse_query(query: str | Mapping[str, Sequence[str]]) -> Query:
    """``prompt_tokens`` and ``output_tokens`` (required), ``model`` (repeatable, and each
    value may list several, comma-separated), ``at`` (ISO 8601 with a zone; default now),
    ``half_life_minutes`` (default 30). Anything else, or a bad value, is an
    :class:`ExpectedLatencyError` naming the parameter."""
    try:
        parsed = httpkit.parse_query_lists(
            query, QUERY_PARAMETERS, repeatable=("model",), max_fields=MAX_MODELS + 10
        )
    except httpkit.BadQuery as exc:
        raise ExpectedLatencyError(str(exc)) from None

    def one(key: str) -> str | None:
        values = parsed.get(key)
        return values[0] if values else None

    tokens = {}
    for key in ("prompt_tokens", "output_tokens"):
        text = one(key)
        if text is None or not text.strip():
            raise ExpectedLatencyError(f"{key} is required (a whole number of tokens)")
        tokens[key] = check_tokens(key, text)
    models: list[str] | None = None
    if "model" in parsed:
        listed = [part.strip() for value in parsed["model"] for part in value.split(",")]
        if not any(listed):
            raise ExpectedLatencyError("model must name at least one model")
        models = check_models(name for name in listed if name)
    at_text = one("at")
    at: dt.datetime | None = None
    if at_text:
        try:
            at = dt.datetime.fromisoformat(at_text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ExpectedLatencyError(f"at must be an ISO 8601 time, not {at_text!r}") from None
        _check_at(at)
    half_text = one("half_life_minutes")
    half_life = DEFAULT_HALF_LIFE
    if half_text:
        try:
            minutes = float(half_text)
        except ValueError:
            minutes = float("nan")
        if not 0 < minutes <= 7 * 24 * 60:  # also false for NaN
            raise ExpectedLatencyError(
                f"half_life_minutes must be a number above 0 and at most {7 * 24 * 60}, not {half_text!r}"
            )
        half_life = dt.timedelta(minutes=minutes)
    return Query(tokens["prompt_tokens"], tokens["output_tokens"], models, at, half_life)


def require_known(rows: Sequence[Estimate], models: Sequence[str] | None) -> list[Estimate]:
    """``rows``, unless models were named and none of them is known: then an error.

    A list with a model that sent nothing yet still ranks (that model last, "unseen"),
    which is what a router asking about its deployments needs; a question only about
    models never seen is a mistake (a typo, the wrong store), and the HTTP endpoint and
    ``tokentrace route`` say so instead of answering with nothing but unknowns.
    """
    if models and rows and all(e.reason == "unseen" for e in rows):
        names = ", ".join(repr(m) for m in models)
        raise ExpectedLatencyError(
            f"unknown model{'s' if len(models) > 1 else ''} {names}: no call or load in the last 14 days"
        )
    return list(rows)


def answer(conn: psycopg.Connection[Any], asked: Query) -> dict[str, Any]:
    """The JSON of ``GET /telemetry/expected-latency`` (without ``status``) for ``asked``."""
    rows = estimates(conn, asked.prompt_tokens, asked.output_tokens, asked.models, asked.at,
                     half_life=asked.half_life)  # fmt: skip
    rows = require_known(rows, asked.models)
    return {
        "prompt_tokens": asked.prompt_tokens,
        "output_tokens": asked.output_tokens,
        "half_life_minutes": asked.half_life / dt.timedelta(minutes=1),
        "estimates": [e.to_json() for e in rows],
    }
