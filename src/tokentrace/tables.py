"""Plain-text tables and sizes for the human-readable reports.

Sizes for people are in decimal units, the same throughout a report and the CLI
(``512 B``, ``8.3 MB``, ``1.0 GB``; 1 kB = 1000 bytes): the one size users set,
``TOKENTRACE_DISK_CAP_GB``, counts 10⁹ bytes a GB, so a cap and the sizes measured
against it read in the same units. Raw byte counts are for ``--json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``8.3 MB``, ``1.0 GB`` (decimal units)."""
    value = float(n)
    if abs(round(value)) < 1000:
        return f"{value:,.0f} B"
    for unit in _UNITS[1:]:
        value /= 1000
        # Rounded first, so 999,960 bytes is "1.0 MB", not "1,000.0 kB".
        if abs(round(value, 1)) < 1000:
            return f"{value:,.1f} {unit}"
    return f"{value:,.1f} {_UNITS[-1]}"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def render(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``rows`` as an aligned table; ``columns`` are ``(key, heading)`` pairs."""
    cells = [[format_value(row.get(key)) for key, _ in columns] for row in rows]
    headings = [heading for _, heading in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headings)]

    def line(values: Sequence[str]) -> str:
        # First column (names) left-aligned, figures right-aligned.
        parts = [values[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    out = [line(headings), line(["-" * w for w in widths])]
    out.extend(line(c) for c in cells)
    return "\n".join(out)
