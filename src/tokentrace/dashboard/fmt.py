"""Numbers as people read them: ``12.4 ms``, ``1.2 M``, ``3.4 GB``, ``+18 %``.

Every formatter takes ``None`` (unknown) and answers an en dash, so a missing
figure never shows as ``None`` or ``nan`` on the page. The results are plain text:
the page escapes them like everything else.
"""

from __future__ import annotations

import math

DASH = "\u2013"
_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_BYTES = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def known(value: float | None) -> bool:
    """True for a finite number (None, NaN and infinity are unknown)."""
    return value is not None and math.isfinite(value)


def number(value: float | None, digits: int = 3) -> str:
    """A figure with about ``digits`` significant digits: ``0.612``, ``12.4``, ``1,234``."""
    if value is None or not known(value):
        return DASH
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(magnitude))
    return f"{value:,.{max(decimals, 0)}f}"


def count(value: float | None) -> str:
    """A whole count with thousands separators: ``12,480``."""
    if value is None or not known(value):
        return DASH
    return f"{int(value):,}"


def compact(value: float | None) -> str:
    """A large count in short form: ``950``, ``12.5 k``, ``3.1 M``."""
    if value is None or not known(value):
        return DASH
    for size, suffix in _SI:
        if abs(value) >= size:
            return f"{number(value / size)} {suffix}"
    return count(value) if float(value).is_integer() else number(value)


def ms(value: float | None) -> str:
    """A duration given in milliseconds: ``840 ms``, ``3.4 s``, ``2.5 min``."""
    if value is None or not known(value):
        return DASH
    if abs(value) >= 120_000:
        return f"{number(value / 60_000)} min"
    if abs(value) >= 1000:
        return f"{number(value / 1000)} s"
    return f"{number(value)} ms"


def size(value: float | None) -> str:
    """Bytes in binary units: ``8.0 KiB``, ``3.4 GiB``."""
    if value is None or not known(value):
        return DASH
    for unit_size, unit in _BYTES:
        if abs(value) >= unit_size:
            return f"{value / unit_size:,.1f} {unit}"
    return f"{int(value):,} B"


def percent(value: float | None, digits: int = 1) -> str:
    """A share (0.123) as ``12.3 %``."""
    if value is None or not known(value):
        return DASH
    return f"{value * 100:.{digits}f} %"


def change(ratio: float | None) -> str:
    """A ratio against a baseline (1.18) as a signed change: ``+18 %``."""
    if ratio is None or not known(ratio):
        return DASH
    delta = (ratio - 1.0) * 100
    if abs(delta) < 0.5:
        return "\u00b10 %"
    sign = "+" if delta > 0 else "\u2212"
    return f"{sign}{abs(delta):.0f} %"


def days(value: float | None) -> str:
    """A number of days: ``3.5 days``, ``> 10 years``."""
    if value is None or not known(value):
        return DASH
    if value > 3650:
        return "> 10 years"
    if value >= 365:
        return f"{value / 365:.1f} years"
    if value < 1:
        return f"{value * 24:.0f} h"
    return f"{value:.0f} days" if value >= 10 else f"{value:.1f} days"
