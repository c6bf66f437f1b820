"""The "Which model, now?" panel: the dispatcher's ranking for one request size.

It shows what ``tokentrace.expected_latency()`` answers (:mod:`tokentrace.expected`)
for a request of :data:`DEFAULT_PROMPT_TOKENS` prompt and :data:`DEFAULT_OUTPUT_TOKENS`
output tokens, or the page's ``route_prompt`` / ``route_output`` query parameters:
each model's expected ms and p90, warm or cold (and the load a cold start adds), the
fitted ms per prompt and output token, and whether the estimate can be trusted — the
same rows as ``GET /telemetry/expected-latency`` and ``tokentrace route``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from tokentrace.dashboard import fmt
from tokentrace.dashboard.svg import colour_class, esc
from tokentrace.expected import Estimate, ExpectedLatencyError, check_tokens, estimates

DEFAULT_PROMPT_TOKENS = 500
DEFAULT_OUTPUT_TOKENS = 200
_REASONS = {
    "thin": "too few recent calls to trust",
    "stale": "no call in the last 6 hours",
    "unseen": "no call in the last 14 days",
}


def request_size(query: Mapping[str, Sequence[str]]) -> tuple[int, int]:
    """``(prompt, output)`` tokens from ``route_prompt`` / ``route_output`` (defaults if absent).

    Raises :class:`~tokentrace.expected.ExpectedLatencyError` for a bad value.
    """
    sizes = []
    for key, default in (("route_prompt", DEFAULT_PROMPT_TOKENS), ("route_output", DEFAULT_OUTPUT_TOKENS)):
        values = query.get(key) or [""]
        if len(values) > 1:
            raise ExpectedLatencyError(f"query parameter {key!r} given more than once")
        sizes.append(check_tokens(key, values[0]) if values[0].strip() else default)
    return sizes[0], sizes[1]


def ranking(conn: psycopg.Connection[Any], prompt_tokens: int, output_tokens: int,
            model: str | None = None) -> list[Estimate]:  # fmt: skip
    """The panel's rows: every model seen in 14 days (or only ``model``)."""
    return estimates(conn, prompt_tokens, output_tokens, [model] if model else None)


def _state(e: Estimate) -> str:
    if e.reason == "unseen":
        return '<span class="muted">unknown</span>'
    if e.warm:
        return '<span class="badge better" title="likely loaded">warm</span>'
    tip = f"likely unloaded: +{fmt.ms(e.expected_load_ms)} to load" if e.expected_load_ms else "likely unloaded"
    return f'<span class="badge worse" title="{esc(tip)}">cold</span>'


def _trust(e: Estimate) -> str:
    if e.trusted:
        return '<span class="muted">ok</span>'
    return f'<span class="badge steady" title="{esc(_REASONS.get(e.reason or "", ""))}">{esc(e.reason)}</span>'


def routing_card(rows: Sequence[Estimate], colours: Mapping[str, int], prompt_tokens: int,
                 output_tokens: int) -> str:  # fmt: skip
    """The panel as HTML (a ``card`` section like the page's others)."""
    sub = (
        f"Expected time of a request of {prompt_tokens:,} prompt and {output_tokens:,} output tokens, "
        "now, fastest first: a recency-weighted fit per model (half-life 30 min), plus the load when "
        "the model is likely unloaded. Set <code>?route_prompt=…&amp;route_output=…</code> for another size."
    )
    if not rows:
        body = ('<div class="empty"><strong>No calls in the last 14 days</strong>'
                "<span>The ranking needs calls with token counts.</span></div>")  # fmt: skip
        return _section(sub, body)
    head = "".join(
        f'<th scope="col">{esc(h)}</th>'
        for h in ("#", "model", "expected", "p90", "state", "load", "prefill/tok", "decode/tok", "calls", "trust")
    )
    body_rows = []
    for e in rows:
        body_rows.append(
            "<tr>"
            f'<td data-v="{e.rank}">{e.rank}</td>'
            f'<td class="model" title="{esc(e.model)}"><i class="sw {colour_class(colours.get(e.model, 0))}">'
            f"</i>{esc(e.model)}</td>"
            f'<td data-v="{esc(e.expected_ms if e.expected_ms is not None else "")}">{esc(fmt.ms(e.expected_ms))}</td>'
            f"<td>{esc(fmt.ms(e.p90_ms))}</td>"
            f"<td>{_state(e)}</td>"
            f"<td>{esc(fmt.ms(e.expected_load_ms))}</td>"
            f"<td>{esc(fmt.number(e.prefill_ms_per_token))}</td>"
            f"<td>{esc(fmt.number(e.decode_ms_per_token))}</td>"
            f"<td>{esc(fmt.count(e.calls))}</td>"
            f"<td>{_trust(e)}</td>"
            "</tr>"
        )
    table = (
        f'<div class="table-wrap"><table id="routing"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body_rows)}</tbody></table></div>'
    )
    return _section(sub, table)


def _section(sub: str, body: str) -> str:
    return (
        '<section class="card" id="which-model"><div class="card-head"><div>'
        f'<h2>Which model, now?</h2><p class="sub">{sub}</p></div></div>{body}</section>'
    )
