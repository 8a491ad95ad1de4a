"""Error-budget maths: pure functions over frozen values, no I/O.

With objective o, the error budget is the share ``1 - o`` of events (or slices) that
may be bad. Over a window with ``good`` of ``total``:

    burn rate        b = (1 - good/total) / (1 - o)      1 spends the budget exactly
    budget remaining r = 1 - b(SLO window)               may go below 0 (overspent)
    time to exhaust  t = r x W / b(now)                  at the current burn b(now)

``None`` stands for "not computable" (no events), never for 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.slo.windows import Tier


@dataclass(frozen=True)
class Counts:
    good: int
    total: int

    @property
    def ratio(self) -> float | None:
        return self.good / self.total if self.total else None


def burn_rate(c: Counts, objective: float) -> float | None:
    if c.total == 0:
        return None
    return (1.0 - c.good / c.total) / (1.0 - objective)


def budget_remaining(c: Counts, objective: float) -> float | None:
    b = burn_rate(c, objective)
    return None if b is None else 1.0 - b


def time_to_exhaustion(
    remaining: float | None, current_burn: float | None, window_s: float
) -> float | None:
    """Seconds until the budget is gone at ``current_burn``; 0 if already gone.

    ``None`` when unknown or never (no burn). A rolling window also forgets old errors,
    so this is the pessimistic figure on-call needs, not a forecast.
    """
    if remaining is None:
        return None
    if remaining <= 0:
        return 0.0
    if current_burn is None or current_burn <= 0:
        return None
    return remaining * window_s / current_burn


@dataclass(frozen=True)
class TierState:
    tier: Tier
    long_burn: float | None
    short_burn: float | None
    enough_events: bool

    @property
    def active(self) -> bool:
        """Both windows burn faster than the factor, on enough events to mean it."""
        return (
            self.enough_events
            and self.long_burn is not None
            and self.short_burn is not None
            and self.long_burn > self.tier.factor
            and self.short_burn > self.tier.factor
        )


def tier_states(
    tiers: tuple[Tier, ...], counts: dict[int, Counts], objective: float, min_events: int
) -> list[TierState]:
    """State of each tier from per-window counts keyed by window length in seconds."""
    out = []
    for t in tiers:
        long_c, short_c = counts[t.long_s], counts[t.short_s]
        out.append(
            TierState(
                t,
                burn_rate(long_c, objective),
                burn_rate(short_c, objective),
                long_c.total >= max(min_events, 1),
            )
        )
    return out


def suppress_slower(states: list[TierState]) -> list[bool]:
    """Which tiers to report active: a tier is muted while a faster one (shorter long
    window) is active, so one incident pages once rather than once per tier."""
    order = sorted(range(len(states)), key=lambda i: states[i].tier.long_s)
    out = [False] * len(states)
    faster_active = False
    for i in order:
        out[i] = states[i].active and not faster_active
        faster_active = faster_active or states[i].active
    return out
