"""The page: HTML around the charts, one string, everything inline.

:func:`render_page` is the whole document; :func:`render_data` is only its data
region (``<main id="data">``), which the page's script fetches (``?partial=1``)
to refresh in place. The stylesheet and the script ship in ``static/`` and are
inlined, so the page makes no request of its own. Every value that comes from
the database goes through :func:`~tokentrace.dashboard.svg.esc`.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import psycopg

from tokentrace.dashboard import alerts_panel, charts, fmt, routing, timeaxis
from tokentrace.dashboard.data import DEFAULT_WINDOW, WINDOWS, PageData, Storage, Trend, Window, gather
from tokentrace.dashboard.svg import colour_class, esc

OTLP_URL = "http://127.0.0.1:4318/v1/traces"
DEFAULT_REFRESH_S = 30
# A change against the 60-day baseline beyond these ratios is flagged.
WORSE_RATIO = 1.10
BETTER_RATIO = 0.90

_LOGO = (
    '<svg viewBox="0 0 26 26" aria-hidden="true">'
    '<rect x="2" y="14" width="5" height="10" rx="1.5" class="logo-bar" opacity=".45"/>'
    '<rect x="10.5" y="8" width="5" height="16" rx="1.5" class="logo-bar" opacity=".7"/>'
    '<rect x="19" y="2" width="5" height="22" rx="1.5" class="logo-bar"/></svg>'
)
# The favicon is inline too: otherwise the browser asks the server for /favicon.ico.
_FAVICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 26 26'%3E"
    "%3Crect x='2' y='14' width='5' height='10' rx='1.5' fill='%234f5bd5' opacity='.5'/%3E"
    "%3Crect x='10.5' y='8' width='5' height='16' rx='1.5' fill='%234f5bd5' opacity='.75'/%3E"
    "%3Crect x='19' y='2' width='5' height='22' rx='1.5' fill='%234f5bd5'/%3E%3C/svg%3E"
)


@functools.cache
def asset(name: str) -> str:
    """A file of ``dashboard/static`` (read once)."""
    return resources.files("tokentrace.dashboard").joinpath("static").joinpath(name).read_text("utf-8")


def _head(title: str, nonce: str, *, extra: str = "") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f'<meta name="referrer" content="no-referrer">{extra}'
        f"<title>{esc(title)}</title>"
        f'<link rel="icon" href="{_FAVICON}">'
        f"<style>{asset('dashboard.css')}</style></head>"
    )


def _script(nonce: str, name: str = "dashboard.js") -> str:
    attr = f' nonce="{esc(nonce)}"' if nonce else ""
    return f"<script{attr}>{asset(name)}</script>"


def _query(window: Window, model: str | None) -> str:
    params = {"window": window.key} if window is not DEFAULT_WINDOW else {}
    if model:
        params["model"] = model
    return "?" + urlencode(params) if params else "?"


# --- header ------------------------------------------------------------------------------
def _header(window: Window, model: str | None, models: Sequence[str], refresh_s: int | None) -> str:
    links = "".join(
        f'<a href="{esc(_query(w, model))}"{" aria-current=page" if w is window else ""}>{esc(w.label)}</a>'
        for w in WINDOWS.values()
    )
    choices = list(models)
    if model and model not in choices:
        choices.append(model)
    options = '<option value="">all models</option>' + "".join(
        f'<option value="{esc(m)}"{" selected" if m == model else ""}>{esc(m)}</option>' for m in choices
    )
    auto = ""
    if refresh_s:
        auto = (
            f'<label title="redraw the data every {refresh_s} s without reloading the page">'
            f'<input type="checkbox" id="auto" checked> auto-refresh {refresh_s} s</label>'
            '<span id="refresh-status" class="status" role="status"></span>'
        )
    return (
        '<header class="top">'
        f'<div class="brand">{_LOGO}<span>tokentrace</span><small>token-aware LLM telemetry</small></div>'
        '<form class="controls" method="get" action="/">'
        f'<nav class="seg" aria-label="time window">{links}</nav>'
        f'<input type="hidden" name="window" value="{esc(window.key)}">'
        f'<label>model <select id="model" name="model">{options}</select></label>'
        '<noscript><button type="submit">apply</button></noscript>'
        f"{auto}</form></header>"
    )


# --- pieces of the data region ----------------------------------------------------------
def _empty(title: str, body: str) -> str:
    """An empty state: what is missing (``title``) and what to do about it (``body``, HTML)."""
    return f'<div class="empty"><strong>{esc(title)}</strong><span>{body}</span></div>'


def _welcome() -> str:
    return (
        '<div class="empty welcome"><strong>No spans yet</strong>'
        f"Point an OTLP exporter at <code>{OTLP_URL}</code> or run <code>tokentrace demo</code>."
        "<ol>"
        "<li>Try it now: <code>tokentrace demo</code> fills the database with a simulated fleet.</li>"
        "<li>Instrument an app: <code>tokentrace.instrument()</code>, or "
        "<code>OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318</code> for any OpenTelemetry SDK.</li>"
        "<li>This page refreshes itself: the charts fill in as spans arrive.</li>"
        "</ol></div>"
    )


def _scope(data: PageData) -> str:
    where = f" for model {data.model}" if data.model else ""
    return f"in the last {data.window.label}{where}"


def _no_calls(data: PageData) -> str:
    if not data.has_spans:
        return _empty("No spans yet", f"Point an OTLP exporter at <code>{OTLP_URL}</code> "
                                      "or run <code>tokentrace demo</code>.")  # fmt: skip
    longer = "Choose a longer window above, or another model." if data.window.key != "60d" else ""
    return _empty(f"No calls {_scope(data)}", longer)


def _kpi(label: str, value: str, detail: str = "", *, unit: str = "", title: str = "") -> str:
    unit_html = f" <small>{esc(unit)}</small>" if unit else ""
    tip = f' title="{esc(title)}"' if title else ""
    return (
        f'<div class="kpi"{tip}><div class="k">{esc(label)}</div>'
        f'<div class="v">{esc(value)}{unit_html}</div><div class="d">{esc(detail) or "&nbsp;"}</div></div>'
    )


def _sum(rows: Sequence[Mapping[str, Any]], key: str) -> int:
    return sum(int(r.get(key) or 0) for r in rows)


def _kpis(data: PageData) -> str:
    rows = data.efficiency
    calls, errors = _sum(rows, "calls"), _sum(rows, "errors")
    fastest = min(
        (r for r in rows if fmt.known(r.get("weighted_ms_per_token"))),
        key=lambda r: float(r["weighted_ms_per_token"]),
        default=None,
    )
    load_rows = [r for r in rows if int(r.get("loads") or 0)]
    load_ms = sum(float(r["avg_load_ms"] or 0) * int(r["loads"]) for r in load_rows)
    loads = _sum(rows, "loads")
    return '<section class="kpis" aria-label="summary">' + "".join((
        _kpi("Calls", fmt.compact(calls), f"{len(rows)} model{'s' if len(rows) != 1 else ''}"),
        _kpi("Tokens out", fmt.compact(_sum(rows, "output_tokens")),
             f"{fmt.compact(_sum(rows, 'input_tokens'))} prompt tokens in"),
        _kpi("Fastest model", fmt.number(fastest["weighted_ms_per_token"]) if fastest else fmt.DASH,
             fastest["model"] if fastest else "no token counts yet", unit="ms/token" if fastest else "",
             title="lowest token-weighted ms per output token in this window"),
        _kpi("Errors", fmt.count(errors), f"{fmt.percent(errors / calls)} of calls" if calls else "no calls"),
        _kpi("Model loads", fmt.count(loads), f"avg {fmt.ms(load_ms / loads)}" if loads else "none in this window"),
        _kpi("Stored", fmt.size(data.storage.total_bytes),
             f"{fmt.compact(data.overall.get('total_measurements'))} spans in 60 days"),
    )) + "</section>"  # fmt: skip


def _legend(models: Sequence[str], colours: Mapping[str, int], extra: str = "") -> str:
    items = "".join(
        f'<li><i class="sw {colour_class(colours.get(m, 0))}"></i><span class="name">{esc(m)}</span></li>'
        for m in models
    )
    return f'<ul class="legend">{items}{extra}</ul>'


def _card(title: str, sub: str, body: str, *, head_extra: str = "", css: str = "card") -> str:
    return (
        f'<section class="{css}"><div class="card-head"><div><h2>{esc(title)}</h2>'
        f'<p class="sub">{sub}</p></div>{head_extra}</div>{body}</section>'
    )


def _efficiency_card(data: PageData, zone: timeaxis.Zone) -> str:
    chart = charts.efficiency_over_time(
        data.series, data.colour, start=data.start, end=data.end, buckets=data.window.buckets, zone=zone
    )
    shown = sorted({r["model"] for r in data.series if r.get("weighted_ms_per_token") is not None},
                   key=lambda m: data.colour.get(m, 0))  # fmt: skip
    legend = _legend(shown, data.colour,
                     '<li><i class="sw band c7"></i>band: up to p95</li>') if chart else ""  # fmt: skip
    bucket = dt.timedelta(hours=data.window.hours) / data.window.buckets
    sub = (
        f"Token-weighted (total inference time ÷ output tokens) per {_duration(bucket)}, "
        f"lower is faster; times in {esc(zone.name)}."
    )
    body = chart or _no_calls(data)
    return _card("Latency per output token", sub, body, head_extra=legend)


def _duration(delta: dt.timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    if minutes % (60 * 24) == 0:
        days = minutes // (60 * 24)
        return "day" if days == 1 else f"{days} days"
    if minutes % 60 == 0:
        hours = minutes // 60
        return "hour" if hours == 1 else f"{hours} hours"
    return f"{minutes} minutes"


def _phases_card(data: PageData) -> str:
    chart = charts.phases(data.totals, data.colour)
    legend = (
        '<ul class="legend"><li><i class="sw light c7"></i>prefill, per input token</li>'
        '<li><i class="sw c7"></i>decode, per output token</li></ul>'
    )
    if chart is None:
        body = _no_calls(data) if not data.totals else _empty(
            "No prefill or decode timings " + _scope(data),
            "They come from servers that report them (Ollama's prompt_eval and eval durations) "
            "and from streamed calls.",
        )  # fmt: skip
        legend = ""
    else:
        body = chart
    return _card("Prefill vs decode", "Where the time goes: reading the prompt, then generating.",
                 body, head_extra=legend)  # fmt: skip


def _loads_card(data: PageData) -> str:
    chart = charts.loads(data.totals, data.colour)
    if chart is None:
        body = _empty(
            "No model loads " + _scope(data),
            "Loads are recorded from <code>load_model</code> spans: "
            "<code>with tokentrace.model_load(model):</code>, or <code>from_pretrained</code> when instrumented.",
        )
    else:
        body = chart
    sub = "Average load time per model; × = loads, cold = share of the model's busy time spent loading."
    return _card("Model loads", sub, body)


_TABLE_COLUMNS = (
    ("model", "model", "text"),
    ("calls", "calls", "num"),
    ("input_tokens", "tokens in", "num"),
    ("output_tokens", "tokens out", "num"),
    ("errors", "errors", "num"),
    ("error_rate", "error rate", "num"),
    ("weighted_ms_per_token", "ms/token", "num"),
    ("p50_ms_per_token", "p50", "num"),
    ("p95_ms_per_token", "p95", "num"),
    ("decode_ms_per_token", "decode", "num"),
    ("loads", "loads", "num"),
    ("avg_load_ms", "avg load", "num"),
)


def _cell(key: str, row: Mapping[str, Any]) -> str:
    value = row.get(key)
    sort = "" if value is None else f' data-v="{esc(value)}"'
    if key in ("calls", "input_tokens", "output_tokens", "loads"):
        return f"<td{sort}>{esc(fmt.count(value))}</td>"
    if key == "errors":
        css = ' class="bad"' if value else ""
        return f"<td{sort}{css}>{esc(fmt.count(value))}</td>"
    if key == "error_rate":
        return f"<td{sort}>{esc(fmt.percent(value))}</td>"
    if key == "avg_load_ms":
        return f"<td{sort}>{esc(fmt.ms(value))}</td>"
    return f"<td{sort}>{esc(fmt.number(value))}</td>"


def _table_card(data: PageData) -> str:
    if not data.efficiency:
        return _card("Calls, tokens and errors per model", "Per model over the window.", _no_calls(data))
    head = "".join(
        f'<th data-sort="{kind}" aria-sort="none" scope="col"><button type="button">{esc(label)}</button></th>'
        for _, label, kind in _TABLE_COLUMNS
    )
    body = []
    for row in data.efficiency:
        calls = int(row.get("calls") or 0)
        row = {**row, "error_rate": (int(row.get("errors") or 0) / calls) if calls else None}
        name = str(row["model"])
        cells = [
            (f'<td class="model" data-v="{esc(name)}" title="{esc(name)}">'
             f'<i class="sw {colour_class(data.colour.get(name, 0))}"></i>{esc(name)}</td>')
        ]  # fmt: skip
        cells += [_cell(key, row) for key, _, _ in _TABLE_COLUMNS[1:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = (
        f'<div class="table-wrap"><table id="per-model"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
    )
    sub = "ms/token is token-weighted; p50/p95 are per call; decode per output token. Click a heading to sort."
    return _card("Calls, tokens and errors per model", sub, table)


def _change_badge(trend: Trend) -> str:
    ratio = trend.ratio
    if ratio is None:
        if trend.recent is None:
            return '<span class="muted" title="no timed calls in the last 24 hours">idle</span>'
        return '<span class="muted" title="no calls before the last 24 hours to compare with">new</span>'
    css = "worse" if ratio >= WORSE_RATIO else "better" if ratio <= BETTER_RATIO else "steady"
    word = {"worse": "slower", "better": "faster", "steady": "steady"}[css]
    tip = f"{word}: last 24 h ÷ 60-day baseline = {ratio:.2f}"
    return f'<span class="badge {css}" title="{esc(tip)}">{esc(fmt.change(ratio))}</span>'


def _sort_value(value: float | None) -> str:
    """A cell's ``data-v`` (what the table sorts by); empty for unknown."""
    return "" if value is None else esc(value)


def _number_cell(value: float | None) -> str:
    return f'<td data-v="{_sort_value(value)}">{esc(fmt.number(value))}</td>'


def _trend_card(data: PageData, zone: timeaxis.Zone) -> str:
    if not data.trends:
        return _card("60-day trend", "Each model against its own baseline.", _no_calls(data))
    # One time axis for every sparkline, from the first day with data (at most 60 days back),
    # so the lines compare and none is squeezed into the last few days of an empty axis.
    firsts = [r["bucket_start"] for r in data.trend_series]
    start = min(firsts, default=data.now - dt.timedelta(days=60))
    head = (
        '<th data-sort="text" aria-sort="none" scope="col"><button type="button">model</button></th>'
        f'<th scope="col" title="since {esc(timeaxis.clock(start, zone))}">daily ms/token</th>'
        '<th data-sort="num" aria-sort="none" scope="col"><button type="button">baseline</button></th>'
        '<th data-sort="num" aria-sort="none" scope="col"><button type="button">last 24 h</button></th>'
        '<th data-sort="num" aria-sort="none" scope="col"><button type="button">change</button></th>'
        '<th data-sort="num" aria-sort="none" scope="col"><button type="button">calls</button></th>'
    )
    rows = []
    for trend in data.trends:
        colour = data.colour.get(trend.model, 0)
        spark = charts.sparkline(trend, data.trend_series, colour, start=start, end=data.now, zone=zone)
        ratio = trend.ratio
        rows.append(
            "<tr>"
            f'<td class="model" data-v="{esc(trend.model)}" title="{esc(trend.model)}">'
            f'<i class="sw {colour_class(colour)}"></i>{esc(trend.model)}</td>'
            f'<td class="spark-cell">{spark or "<span class=muted>" + fmt.DASH + "</span>"}</td>'
            f"{_number_cell(trend.baseline)}{_number_cell(trend.recent)}"
            f'<td data-v="{_sort_value(ratio)}">{_change_badge(trend)}</td>'
            f'<td data-v="{trend.calls}">{esc(fmt.compact(trend.calls))}</td>'
            "</tr>"
        )
    table = (
        f'<div class="table-wrap"><table id="trends"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table></div>'
    )
    sub = (
        "Token-weighted ms/token: the 60-day baseline against the last 24 hours. "
        f"A change of {fmt.change(WORSE_RATIO)} or more is a regression."
    )
    return _card("60-day trend", sub, table)


def _cap_fact(s: Storage) -> tuple[str, str, str]:
    if s.cap_bytes is None:
        return "disk cap", "none set", "TOKENTRACE_DISK_CAP_GB"
    cap = f"{s.cap_bytes / 1e9:g} GB"  # as configured: TOKENTRACE_DISK_CAP_GB counts 10⁹ bytes
    if s.fits_cap:
        return "disk cap", "never reached", f"the projected size fits in {cap}"
    return "days until the cap", fmt.days(s.days_until_cap), f"until {cap}"


def _storage_card(data: PageData, zone: timeaxis.Zone) -> str:
    s = data.storage
    chart = charts.footprint(s.relations)
    if s.growth_per_day is None:
        growth_note = "no spans yet"
    else:
        growth_note = "recent days" if s.growth_measured else "average since the oldest span"
    facts = (
        ("tokentrace data", fmt.size(s.total_bytes),
         f"whole database {fmt.size(s.database_bytes)}" if s.database_bytes is not None else ""),
        ("growth per day", fmt.size(s.growth_per_day), growth_note),
        (f"at {s.retention_days}-day retention", fmt.size(s.projected_bytes), "projected size"),
        ("oldest span", timeaxis.clock(s.oldest_span, zone) if s.oldest_span else fmt.DASH, zone.name),
        _cap_fact(s),
    )  # fmt: skip
    dl = '<dl class="facts">' + "".join(
        f'<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd><dd class="note">{esc(n) or "&nbsp;"}</dd></div>'
        for k, v, n in facts
    ) + "</dl>"
    body = dl + (chart or _empty("No relations found", "Run <code>tokentrace migrate</code>."))
    return _card("Storage footprint", "Size of the tokentrace schema and how fast it grows.", body)


def render_data(data: PageData, *, refresh_s: int | None, zone: timeaxis.Zone) -> str:
    """The data region alone (what ``?partial=1`` answers and the script swaps in)."""
    where = f"model <strong>{esc(data.model)}</strong>" if data.model else "<strong>all models</strong>"
    meta = (
        f'<p class="meta"><span>Last <strong>{esc(data.window.label)}</strong> · {where}</span>'
        f"<span>updated {esc(timeaxis.clock(data.now, zone, seconds=True))} ({esc(zone.name)})</span></p>"
    )
    parts = [meta]
    if not data.has_spans:
        parts.append(_welcome())
    else:
        parts.append(alerts_panel.render(data.alerts))
    parts += [
        _kpis(data),
        routing.routing_card(data.routing, data.colour, *data.route),
        _efficiency_card(data, zone),
        f'<div class="grid2">{_phases_card(data)}{_loads_card(data)}</div>',
        _table_card(data),
        f'<div class="grid-trend">{_trend_card(data, zone)}{_storage_card(data, zone)}</div>',
    ]
    refresh = refresh_s or 0
    return (
        f'<main id="data" data-tz="{esc(zone.name)}" data-refresh="{refresh}" '
        f'data-generated="{esc(data.now.astimezone(dt.timezone.utc).isoformat())}">'
        + "".join(parts)
        + "</main>"
    )


def _footer() -> str:
    return (
        "<footer>Figures come from the documented SQL reports (<code>tokentrace.efficiency()</code>, "
        "<code>efficiency_series()</code>, <code>model_trends_60d</code>, <code>footprint</code>): "
        "<code>tokentrace psql</code> gives the same numbers. JSON: <code>/telemetry/efficiency</code>, "
        "<code>/telemetry/60day</code>, <code>/telemetry/footprint</code>, "
        "<code>/telemetry/expected-latency</code>, <code>/telemetry/alerts</code>.</footer>"
    )


def render_document(data: PageData, *, refresh_s: int | None, zone: timeaxis.Zone, nonce: str = "") -> str:
    """The whole page for already gathered ``data``."""
    title = f"tokentrace · {data.window.label}" + (f" · {data.model}" if data.model else "")
    return (
        _head(title, nonce)
        + "<body>"
        + _header(data.window, data.model, data.models, refresh_s)
        + render_data(data, refresh_s=refresh_s, zone=zone)
        + _footer()
        + _script(nonce)
        + "</body></html>"
    )


def render_page(
    conn: psycopg.Connection[Any],
    *,
    window: Window | str = DEFAULT_WINDOW,
    model: str | None = None,
    refresh_s: int | None = DEFAULT_REFRESH_S,
    now: dt.datetime | None = None,
    tz: str | None = None,
    nonce: str = "",
    partial: bool = False,
    route: tuple[int, int] = (routing.DEFAULT_PROMPT_TOKENS, routing.DEFAULT_OUTPUT_TOKENS),
) -> str:
    """The dashboard as HTML, read from the reports over ``conn``.

    ``window`` is one of :data:`~tokentrace.dashboard.data.WINDOWS` (``"1h"``,
    ``"24h"``, ``"7d"``, ``"60d"``); ``tz`` an IANA time zone name for the labels
    (UTC if unknown); ``nonce`` the Content-Security-Policy nonce of the inline
    script; ``partial`` renders only the data region; ``route`` the (prompt, output)
    tokens of the request the "Which model, now?" panel ranks the models for.
    """
    chosen = WINDOWS[window] if isinstance(window, str) else window
    moment = now or dt.datetime.now(dt.timezone.utc)
    zone = timeaxis.zone(tz)
    data = gather(conn, chosen, model or None, moment, route)
    if partial:
        return render_data(data, refresh_s=refresh_s, zone=zone)
    return render_document(data, refresh_s=refresh_s, zone=zone, nonce=nonce)


# --- pages without data -----------------------------------------------------------------
def message_page(title: str, message_html: str, *, nonce: str = "", retry_s: int | None = None) -> str:
    """A small page for errors (bad parameter, database unavailable)."""
    extra = f'<meta http-equiv="refresh" content="{int(retry_s)}">' if retry_s else ""
    return (
        _head(f"tokentrace · {title}", nonce, extra=extra)
        + f'<body><main><section class="card login"><div class="brand">{_LOGO}<span>tokentrace</span></div>'
        + f"<h2>{esc(title)}</h2>"
        + f'<p class="sub">{message_html}</p></section></main></body></html>'
    )


def login_page(nonce: str) -> str:
    """Asks for the bearer token; the script keeps it in a same-site cookie for this page."""
    form = (
        '<form id="login"><label for="token">This tokentrace requires its bearer token '
        "(<code>TOKENTRACE_AUTH_TOKEN</code>).</label>"
        '<input id="token" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit">open the dashboard</button></form>'
    )
    return (
        _head("tokentrace · sign in", nonce)
        + f'<body><main><section class="card login"><div class="brand">{_LOGO}<span>tokentrace</span></div>'
        + f"{form}</section></main>"
        + _script(nonce, "login.js")
        + "</body></html>"
    )
