"""Durations, SLO windows (rolling and calendar) and alert tiers rescaled to a window.

Everything here is pure: no store, no clock. Rollups have one-minute resolution, so
every window Governor reads is a whole number of minutes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Literal
from zoneinfo import ZoneInfo

import yaml

MINUTE = 60
HOUR = 3600
DAY = 86400
_UNITS = {"w": 7 * DAY, "d": DAY, "h": HOUR, "m": MINUTE, "s": 1}
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """``"1h30m"`` -> 5400 seconds. Units w, d, h, m, s in that order; raises ValueError."""
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m or not text.strip() or not any(m.groups()):
        raise ValueError(f"expected a duration such as 5m, 1h, 28d or 1h30m, got {text!r}")
    return sum(int(g) * u for g, u in zip(m.groups(), _UNITS.values(), strict=True) if g)


@functools.lru_cache(maxsize=4096)  # called for every window of every SLO each cycle
def format_duration(seconds: float) -> str:
    """Canonical label: 300 -> ``5m``, 3600 -> ``1h``, 201600 -> ``2d8h``."""
    s = int(round(seconds))
    if s == 0:
        return "0s"
    out = ""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1)):
        n, s = divmod(s, size)
        if n:
            out += f"{n}{unit}"
    return out


@dataclass(frozen=True)
class Window:
    """The SLO window: rolling (``duration_s``) or calendar (``month``/``week`` in ``tz``)."""

    kind: Literal["rolling", "calendar"]
    duration_s: int = 0
    calendar: Literal["month", "week", ""] = ""
    tz: str = "UTC"

    @property
    def label(self) -> str:
        return format_duration(self.duration_s) if self.kind == "rolling" else self.calendar

    def bounds(self, until: datetime) -> tuple[datetime, int]:
        """Start of the window ending at ``until`` and the window's full length in seconds.

        A calendar window starts at the current month/week (Monday 00:00) in ``tz`` and
        its length is the whole period's, so budgets are shares of the full period.
        """
        if self.kind == "rolling":
            return until - timedelta(seconds=self.duration_s), self.duration_s
        local = until.astimezone(ZoneInfo(self.tz))
        if self.calendar == "month":
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            nxt = (start + timedelta(days=32)).replace(day=1)
        else:
            start = (local - timedelta(days=local.weekday())).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            nxt = start + timedelta(days=7)
        # Re-localize: a DST change inside the period moves the wall-clock offset.
        tzinfo = ZoneInfo(self.tz)
        start = start.replace(tzinfo=None).replace(tzinfo=tzinfo)
        nxt = nxt.replace(tzinfo=None).replace(tzinfo=tzinfo)
        return start, int((nxt - start).total_seconds())

    def nominal_s(self) -> int:
        """Length used to rescale tiers when no instant is given (a 30-day month)."""
        if self.kind == "rolling":
            return self.duration_s
        return 30 * DAY if self.calendar == "month" else 7 * DAY


@dataclass(frozen=True)
class Tier:
    """A multiwindow burn-rate alert: fires when burn(long) > factor AND burn(short) > factor."""

    name: str
    severity: str
    long_s: int
    short_s: int
    factor: float
    for_s: float = 0.0


@dataclass(frozen=True)
class TierTemplate:
    name: str
    severity: str
    long_s: int
    short_s: int
    budget_fraction: float


def _round_minutes(seconds: float) -> int:
    return max(MINUTE, int(round(seconds / MINUTE)) * MINUTE)


def default_templates() -> tuple[int, tuple[TierTemplate, ...]]:
    """The packaged default tiers (``tiers.yaml``): base window and templates."""
    text = resources.files("controlplane.slo").joinpath("tiers.yaml").read_text()
    data = yaml.safe_load(text)
    base = parse_duration(data["base_window"])
    tiers = tuple(
        TierTemplate(
            t["name"], t["severity"], parse_duration(t["long"]), parse_duration(t["short"]),
            float(t["budget_fraction"]),
        )
        for t in data["tiers"]
    )  # fmt: skip
    return base, tiers


def rescale(templates: tuple[TierTemplate, ...], base_s: int, window_s: int) -> tuple[Tier, ...]:
    """Tiers for an SLO window of ``window_s``: windows scale, budget fractions stay.

    long' = round_min(long x W / base), short' = round_min(short x W / base), and
    factor' = budget_fraction x W / long', so burning at factor' for long' spends
    exactly budget_fraction of the budget, as the template does for the base window.
    """
    scale = window_s / base_s
    out = []
    for t in templates:
        long_s = _round_minutes(t.long_s * scale)
        short_s = min(_round_minutes(t.short_s * scale), long_s)
        factor = round(t.budget_fraction * window_s / long_s, 9)
        out.append(Tier(t.name, t.severity, long_s, short_s, factor))
    return tuple(out)


def default_tiers(window_s: int) -> tuple[Tier, ...]:
    base, templates = default_templates()
    return rescale(templates, base, window_s)
