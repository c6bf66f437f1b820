"""Small building blocks for charts drawn as inline SVG, server side.

No charting library, no script: a chart is a string of SVG elements, sized by its
``viewBox`` so it scales with the page. Colours come from CSS classes (``c0`` …
``c7`` for models, ``grid``, ``axis``), so one stylesheet serves light and dark
themes. Every element that draws data carries the class ``mark``: the tests (and
anyone curious) can tell an empty chart from a drawn one.

Every text that reaches the SVG goes through :func:`esc`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PALETTE_SIZE = 8


def esc(value: object) -> str:
    """``value`` as text safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def num(value: float) -> str:
    """A coordinate, short: ``12.5``, ``300``."""
    text = f"{value:.1f}"
    return text.removesuffix(".0")


def colour_class(index: int) -> str:
    """The CSS class of the ``index``-th model colour (the palette repeats after 8)."""
    return f"c{index % PALETTE_SIZE}"


@dataclass(frozen=True)
class Frame:
    """A chart's size and the margins around its plot area (all in SVG units)."""

    width: float
    height: float
    left: float = 56
    right: float = 16
    top: float = 12
    bottom: float = 40

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top


@dataclass(frozen=True)
class Linear:
    """Maps ``lo..hi`` onto ``start..end``."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        if self.hi == self.lo:
            return self.start
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)


def nice_step(span: float, target: int) -> float:
    """A round step (1, 2, 2.5 or 5 × 10ⁿ) giving about ``target`` steps over ``span``."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def nice_max(value: float, target: int = 5) -> tuple[float, float]:
    """An axis top at or above ``value`` on a round step, and that step."""
    if value <= 0 or not math.isfinite(value):
        return 1.0, 0.25
    step = nice_step(value, target)
    return math.ceil(value / step - 1e-9) * step, step


def tick_values(top: float, step: float) -> list[float]:
    count = round(top / step)
    return [i * step for i in range(count + 1)]


def svg(frame: Frame, body: Iterable[str], *, label: str, css_class: str = "chart") -> str:
    """The ``<svg>`` element; ``label`` names the chart for screen readers."""
    return (
        f'<svg class="{css_class}" viewBox="0 0 {num(frame.width)} {num(frame.height)}" '
        f'role="img" aria-label="{esc(label)}" preserveAspectRatio="xMidYMid meet">'
        + "".join(body)
        + "</svg>"
    )


def text(x: float, y: float, content: str, *, css_class: str = "label", anchor: str = "start",
         baseline: str | None = None) -> str:  # fmt: skip
    shift = f' dominant-baseline="{baseline}"' if baseline else ""
    return (
        f'<text x="{num(x)}" y="{num(y)}" class="{css_class}" text-anchor="{anchor}"{shift}>'
        f"{esc(content)}</text>"
    )


def line(x1: float, y1: float, x2: float, y2: float, css_class: str) -> str:
    return f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" class="{css_class}"/>'


def path_d(points: Sequence[tuple[float, float]]) -> str:
    """A polyline's path data: ``M x,y L x,y …``."""
    return " ".join(f"{'M' if i == 0 else 'L'}{num(x)},{num(y)}" for i, (x, y) in enumerate(points))


def title(content: str) -> str:
    """A native tooltip for the element it is placed in."""
    return f"<title>{esc(content)}</title>"


def y_axis(frame: Frame, scale: Linear, top: float, step: float, unit: str, fmt: str = "{:g}") -> list[str]:
    """Horizontal grid lines with their values, and the axis title (with its unit)."""
    out = []
    for value in tick_values(top, step):
        y = scale(value)
        out.append(line(frame.x0, y, frame.x1, y, "grid"))
        out.append(text(frame.x0 - 8, y, fmt.format(value), css_class="tick", anchor="end", baseline="middle"))
    mid = (frame.y0 + frame.y1) / 2
    out.append(
        f'<text class="axis-title" text-anchor="middle" transform="translate(14 {num(mid)}) rotate(-90)">'
        f"{esc(unit)}</text>"
    )
    return out


def x_value_axis(frame: Frame, scale: Linear, top: float, step: float, unit: str,
                 fmt: str = "{:g}") -> list[str]:  # fmt: skip
    """Vertical grid lines with their values under the plot, and the axis title."""
    out = []
    for value in tick_values(top, step):
        x = scale(value)
        out.append(line(x, frame.y1, x, frame.y0, "grid"))
        out.append(text(x, frame.y0 + 16, fmt.format(value), css_class="tick", anchor="middle"))
    out.append(text((frame.x0 + frame.x1) / 2, frame.height - 4, unit, css_class="axis-title", anchor="middle"))
    return out


def tick_format(step: float) -> str:
    """A format showing as many decimals as the tick step needs (0.25 → two)."""
    decimals = len(f"{step:.4f}".rstrip("0").partition(".")[2])
    return f"{{:,.{decimals}f}}"
