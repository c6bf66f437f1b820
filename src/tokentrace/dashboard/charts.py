"""The dashboard's charts, each a function from report rows to an SVG string.

* :func:`efficiency_over_time` — token-weighted ms/token per model per bucket (a
  line per model), with the p95 as a translucent band above it.
* :func:`phases` — prefill (per input token) and decode (per output token) ms/token
  per model, side by side.
* :func:`loads` — average model-load time per model, with the load count and the
  share of the model's busy time spent loading.
* :func:`sparkline` — one model's daily ms/token over 60 days against its baseline.
* :func:`footprint` — size per relation.

A chart with nothing to draw returns ``None``; the page shows an empty state
instead. Colours are the ``c0``…``c7`` classes, indexed by the model's place in the
page's model list, so a model has the same colour in every chart.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokentrace.dashboard import fmt, svg, timeaxis
from tokentrace.dashboard.data import Trend
from tokentrace.dashboard.svg import Frame, Linear, esc, num

_NAME_CHARS = 24


def short(name: str, limit: int = _NAME_CHARS) -> str:
    """A model name cut to ``limit`` characters (the full name is in the tooltip)."""
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _value(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    return float(value) if value is not None and fmt.known(float(value)) else None


# --- efficiency over time ------------------------------------------------------------
@dataclass(frozen=True)
class _Point:
    index: int  # the bucket's position in the window
    x: float
    weighted: float
    p95: float
    row: Mapping[str, Any]


def _runs(points: Sequence[_Point], max_step: int) -> list[list[_Point]]:
    """Points split where more than ``max_step`` buckets apart (a long gap is drawn dotted)."""
    runs: list[list[_Point]] = []
    for point in points:
        if runs and point.index - runs[-1][-1].index <= max_step:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


def _point_tip(model: str, p: _Point, zone: timeaxis.Zone) -> str:
    calls = int(p.row.get("calls") or 0)
    return (
        f"{model} \u00b7 {timeaxis.clock(p.row['bucket_start'], zone)}\n"
        f"{fmt.number(p.weighted)} ms/token (p95 {fmt.number(p.p95)}) \u00b7 {fmt.count(calls)} calls"
    )


def _model_series(
    model: str, colour: int, points: list[_Point], y: Linear, zone: timeaxis.Zone, max_step: int
) -> str:
    runs = _runs(points, max_step)
    parts: list[str] = []
    for run in runs:
        top = [(p.x, y(p.p95)) for p in run]
        bottom = [(p.x, y(p.weighted)) for p in reversed(run)]
        if len(run) > 1:
            parts.append(f'<path class="band mark" d="{svg.path_d(top + bottom)} Z"/>')
        else:
            parts.append(svg.line(run[0].x, top[0][1], run[0].x, bottom[0][1], "whisker mark"))
    for before, after in itertools.pairwise(runs):
        a, b = before[-1], after[0]
        parts.append(f'<path class="gap" d="{svg.path_d([(a.x, y(a.weighted)), (b.x, y(b.weighted))])}"/>')
    for run in runs:
        if len(run) > 1:
            parts.append(f'<path class="line mark" d="{svg.path_d([(p.x, y(p.weighted)) for p in run])}"/>')
    for p in points:
        parts.append(
            f'<circle class="dot mark" cx="{num(p.x)}" cy="{num(y(p.weighted))}" r="2.6">'
            f"{svg.title(_point_tip(model, p, zone))}</circle>"
        )
    return f'<g class="series {svg.colour_class(colour)}" data-model="{esc(model)}">{"".join(parts)}</g>'


def efficiency_over_time(
    rows: Sequence[Mapping[str, Any]],
    colours: Mapping[str, int],
    *,
    start: dt.datetime,
    end: dt.datetime,
    buckets: int,
    zone: timeaxis.Zone,
) -> str | None:
    """ms/token per model over ``start..end`` (a line each), p95 as a band; None if no data."""
    frame = Frame(1240, 300, left=64, right=18, top=14, bottom=34)
    span_s = (end - start).total_seconds()
    bucket_s = span_s / buckets
    x = Linear(0, span_s, frame.x0, frame.x1)
    by_model: dict[str, list[_Point]] = {}
    for row in rows:
        weighted = _value(row, "weighted_ms_per_token")
        if weighted is None:
            continue
        offset = (row["bucket_start"] - start).total_seconds()
        centre = min(offset + bucket_s / 2, span_s)
        if centre < 0:
            continue
        p95 = max(_value(row, "p95_ms_per_token") or weighted, weighted)
        point = _Point(round(offset / bucket_s), x(centre), weighted, p95, row)
        by_model.setdefault(row["model"], []).append(point)
    if not by_model:
        return None
    top, step = svg.nice_max(max(p.p95 for pts in by_model.values() for p in pts))
    y = Linear(0, top, frame.y0, frame.y1)
    body = svg.y_axis(frame, y, top, step, "ms per output token", svg.tick_format(step))
    for tick in timeaxis.ticks(start, end, zone):
        tx = x((tick.at - start).total_seconds())
        body.append(svg.line(tx, frame.y0, tx, frame.y0 + 5, "axis"))
        body.append(svg.text(tx, frame.y0 + 20, tick.label, css_class="tick", anchor="middle"))
    body.append(svg.line(frame.x0, frame.y0, frame.x1, frame.y0, "axis"))
    for model in sorted(by_model, key=lambda m: colours.get(m, 0)):
        # Calls a few buckets apart are still one line; a longer silence is drawn dotted.
        max_step = max(3, buckets // 12)
        body.append(_model_series(model, colours.get(model, 0), by_model[model], y, zone, max_step))
    return svg.svg(frame, body, label="token-weighted milliseconds per output token per model over time")


# --- horizontal bars, one group per model -----------------------------------------
def _name_label(frame: Frame, y: float, model: str) -> str:
    return (
        f'<text x="{num(frame.x0 - 10)}" y="{num(y)}" class="name" text-anchor="end" '
        f'dominant-baseline="middle">{esc(short(model))}{svg.title(model)}</text>'
    )


def _bar(x: Linear, y: float, height: float, value: float, css: str, tip: str) -> str:
    width = max(x(value) - x(0), 1.5)  # a hair of colour even for tiny values
    return (
        f'<rect class="{css} mark" x="{num(x(0))}" y="{num(y)}" width="{num(width)}" '
        f'height="{num(height)}" rx="2">{svg.title(tip)}</rect>'
    )


def phases(totals: Mapping[str, Mapping[str, Any]], colours: Mapping[str, int]) -> str | None:
    """Prefill and decode ms/token per model (where reported); None if no model reports them."""
    rows = [
        (m, _value(r, "prefill_ms_per_token"), _value(r, "decode_ms_per_token"))
        for m, r in sorted(totals.items(), key=lambda item: colours.get(item[0], 0))
    ]
    rows = [r for r in rows if r[1] is not None or r[2] is not None]
    if not rows:
        return None
    row_h = 44
    frame = Frame(600, 30 + row_h * len(rows) + 34, left=170, right=74, top=18, bottom=34)
    top, step = svg.nice_max(max(v for _, p, d in rows for v in (p, d) if v is not None))
    x = Linear(0, top, frame.x0, frame.x1)
    body = svg.x_value_axis(frame, x, top, step, "milliseconds per token", svg.tick_format(step))
    for i, (model, prefill, decode) in enumerate(rows):
        y0 = frame.y1 + 6 + i * row_h
        cls = svg.colour_class(colours.get(model, 0))
        body.append(_name_label(frame, y0 + 14, model))
        for j, (value, phase, per) in enumerate(((prefill, "prefill", "input"), (decode, "decode", "output"))):
            y = y0 + j * 15
            if value is None:
                body.append(svg.text(frame.x0 + 4, y + 6, f"{phase}: not reported", css_class="note",
                                     baseline="middle"))  # fmt: skip
                continue
            tip = f"{model} \u00b7 {phase}: {fmt.number(value)} ms per {per} token"
            body.append(f'<g class="{cls}">{_bar(x, y, 12, value, f"bar {phase}", tip)}</g>')
            body.append(svg.text(x(value) + 6, y + 6, f"{fmt.number(value)} ms", css_class="value",
                                 baseline="middle"))  # fmt: skip
    return svg.svg(frame, body, label="prefill and decode milliseconds per token per model", css_class="chart bars")


def cold_share(row: Mapping[str, Any]) -> float | None:
    """Of the model's busy time (loading + inferring), the share spent loading."""
    load = _value(row, "load_ms") or 0.0
    busy = load + (_value(row, "inference_ms") or 0.0)
    return load / busy if busy > 0 else None


def loads(totals: Mapping[str, Mapping[str, Any]], colours: Mapping[str, int]) -> str | None:
    """Average load time per model with count and cold-load share; None if nothing loaded."""
    rows = [
        (m, r) for m, r in sorted(totals.items(), key=lambda item: colours.get(item[0], 0))
        if int(r.get("loads") or 0) > 0 and _value(r, "avg_load_ms") is not None
    ]  # fmt: skip
    if not rows:
        return None
    row_h = 34
    frame = Frame(600, 24 + row_h * len(rows) + 34, left=170, right=150, top=14, bottom=34)
    seconds = [(_value(r, "avg_load_ms") or 0.0) / 1000 for _, r in rows]
    top, step = svg.nice_max(max(seconds))
    x = Linear(0, top, frame.x0, frame.x1)
    body = svg.x_value_axis(frame, x, top, step, "seconds per load (average)", svg.tick_format(step))
    for i, ((model, row), value) in enumerate(zip(rows, seconds)):
        y = frame.y1 + 6 + i * row_h
        count = int(row.get("loads") or 0)
        share = cold_share(row)
        tip = (f"{model} \u00b7 {fmt.count(count)} load{'s' if count != 1 else ''}, "
               f"average {fmt.ms(value * 1000)}; {fmt.percent(share)} of busy time spent loading")  # fmt: skip
        body.append(_name_label(frame, y + 9, model))
        body.append(f'<g class="{svg.colour_class(colours.get(model, 0))}">{_bar(x, y, 18, value, "bar", tip)}</g>')
        body.append(svg.text(x(value) + 6, y + 9, fmt.ms(value * 1000), css_class="value", baseline="middle"))
        note = f"{fmt.count(count)}\u00d7 \u00b7 {fmt.percent(share)} cold"
        body.append(svg.text(frame.width - 4, y + 9, note, css_class="note", anchor="end", baseline="middle"))
    return svg.svg(frame, body, label="model loads per model: average load time, count and cold-load share",
                   css_class="chart bars")


# --- 60-day sparkline ------------------------------------------------------------------
def sparkline(
    trend: Trend,
    rows: Sequence[Mapping[str, Any]],
    colour: int,
    *,
    start: dt.datetime,
    end: dt.datetime,
    zone: timeaxis.Zone,
) -> str | None:
    """Daily ms/token of one model over 60 days, with its 60-day baseline dashed."""
    points = [
        (row["bucket_start"], v) for row in rows
        if row["model"] == trend.model and (v := _value(row, "weighted_ms_per_token")) is not None
    ]  # fmt: skip
    if not points:
        return None
    frame = Frame(240, 40, left=4, right=6, top=5, bottom=5)
    span = (end - start).total_seconds()
    values = [v for _, v in points] + ([trend.baseline] if trend.baseline is not None else [])
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or hi * 0.1 or 1.0
    y = Linear(lo - pad, hi + pad, frame.y0, frame.y1)
    x = Linear(0, span, frame.x0, frame.x1)
    xy = [(x(min(max((t - start).total_seconds(), 0), span)), y(v)) for t, v in points]
    body = []
    if trend.baseline is not None:
        by = y(trend.baseline)
        body.append(svg.line(frame.x0, by, frame.x1, by, "baseline"))
    cls = svg.colour_class(colour)
    tip = (f"{trend.model}: daily ms/token since {timeaxis.clock(points[0][0], zone)}; "
           f"dashed: the 60-day baseline {fmt.number(trend.baseline)} ms/token")  # fmt: skip
    if len(xy) > 1:
        body.append(f'<path class="line mark {cls}" d="{svg.path_d(xy)}">{svg.title(tip)}</path>')
    last_x, last_y = xy[-1]
    body.append(
        f'<circle class="dot mark {cls}" cx="{num(last_x)}" cy="{num(last_y)}" r="2.6">{svg.title(tip)}</circle>'
    )
    return svg.svg(frame, body, label=f"60-day trend of {trend.model}", css_class="chart spark")


# --- footprint -----------------------------------------------------------------------
_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, "bytes"))
_MAX_RELATIONS = 8


def footprint(relations: Sequence[Mapping[str, Any]]) -> str | None:
    """Size of the largest relations of the tokentrace schema; None if there are none."""
    rows = sorted(relations, key=lambda r: -int(r.get("total_bytes") or 0))[:_MAX_RELATIONS]
    if not rows:
        return None
    largest = max(int(r.get("total_bytes") or 0) for r in rows)
    unit_size, unit = next((s, u) for s, u in _UNITS if largest >= s or s == 1)
    sizes = [int(r.get("total_bytes") or 0) / unit_size for r in rows]
    row_h = 24
    frame = Frame(500, 20 + row_h * len(rows) + 34, left=130, right=70, top=12, bottom=34)
    top, step = svg.nice_max(max(sizes))
    x = Linear(0, top, frame.x0, frame.x1)
    body = svg.x_value_axis(frame, x, top, step, f"size ({unit})", svg.tick_format(step))
    for i, (row, value) in enumerate(zip(rows, sizes)):
        y = frame.y1 + 6 + i * row_h
        name = str(row.get("relation"))
        tip = f"{name}: {fmt.size(row.get('total_bytes'))}, about {fmt.count(row.get('row_estimate'))} rows"
        body.append(_name_label(frame, y + 7, name))
        body.append(f'<g class="storage">{_bar(x, y, 14, value, "bar", tip)}</g>')
        body.append(svg.text(x(value) + 6, y + 7, fmt.size(row.get("total_bytes")), css_class="value",
                             baseline="middle"))  # fmt: skip
    return svg.svg(frame, body, label="database size per relation", css_class="chart bars")
