"""Time-axis ticks in the viewer's time zone.

The browser tells the page its IANA time zone (the ``tt_tz`` cookie, set by the
page's script); ticks fall on round local times (every 10 minutes, 3 hours, day…)
and their labels are local wall-clock times. Without a known zone the page uses
UTC and says so.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = dt.timezone.utc
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")
_MINUTE = 60
_HOUR = 3600
_DAY = 86_400
# Tick spacings, in seconds, from fine to coarse; the first that gives at most
# ``max_ticks`` ticks over the domain wins.
_STEPS = (
    5 * _MINUTE, 10 * _MINUTE, 15 * _MINUTE, 30 * _MINUTE, _HOUR, 2 * _HOUR, 3 * _HOUR,
    6 * _HOUR, 12 * _HOUR, _DAY, 2 * _DAY, 7 * _DAY, 14 * _DAY,
)  # fmt: skip


@dataclass(frozen=True)
class Zone:
    """A display time zone: ``tzinfo`` and the name shown to the viewer."""

    tzinfo: dt.tzinfo
    name: str

    @property
    def is_utc(self) -> bool:
        return self.name == "UTC"


UTC_ZONE = Zone(UTC, "UTC")


def zone(name: str | None) -> Zone:
    """The zone called ``name`` (an IANA name such as ``Europe/Berlin``), else UTC."""
    if not name or len(name) > 64 or not _ZONE_NAME.match(name) or name in ("UTC", "Etc/UTC"):
        return UTC_ZONE
    try:
        return Zone(ZoneInfo(name), name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # An unknown name, or a system without time zone data: UTC, labelled as such.
        return UTC_ZONE


@dataclass(frozen=True)
class Tick:
    at: dt.datetime
    label: str


def _floor(local: dt.datetime, step: int) -> dt.datetime:
    """``local`` rounded down to a multiple of ``step`` in local wall-clock time."""
    if step >= _DAY:
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if step >= 7 * _DAY:
            return midnight - dt.timedelta(days=midnight.weekday())  # weeks start on Monday
        return midnight
    seconds = local.hour * _HOUR + local.minute * _MINUTE + local.second
    floored = seconds - seconds % step
    return local.replace(hour=floored // _HOUR, minute=floored % _HOUR // _MINUTE, second=0, microsecond=0)


def _label(local: dt.datetime, step: int) -> str:
    if step >= _DAY or (local.hour == 0 and local.minute == 0):
        return f"{local:%b} {local.day}"
    return f"{local:%H:%M}"


def ticks(start: dt.datetime, end: dt.datetime, where: Zone, max_ticks: int = 8) -> list[Tick]:
    """Round local times between ``start`` and ``end`` (aware datetimes), labelled."""
    span = (end - start).total_seconds()
    if span <= 0:
        return []
    step = next((s for s in _STEPS if span / s <= max_ticks), _STEPS[-1])
    local_start = start.astimezone(where.tzinfo)
    # Stepping in naive wall-clock time keeps ticks on round local times across a
    # daylight-saving change; each is then placed at its real instant.
    cursor = _floor(local_start, step).replace(tzinfo=None)
    out: list[Tick] = []
    while len(out) < 4 * max_ticks:
        at = cursor.replace(tzinfo=where.tzinfo).astimezone(UTC)
        if at > end:
            break
        if at >= start:
            out.append(Tick(at, _label(cursor, step)))
        cursor += dt.timedelta(seconds=step)
    return out


def clock(moment: dt.datetime, where: Zone, *, seconds: bool = False) -> str:
    """``moment`` as a local date and time for prose: ``Mar 3, 14:05``."""
    local = moment.astimezone(where.tzinfo)
    time = f"{local:%H:%M:%S}" if seconds else f"{local:%H:%M}"
    return f"{local:%b} {local.day}, {time}"
