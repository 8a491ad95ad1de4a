"""Admission limits for the router: token buckets per tenant and priority.

A ``Limit`` matches requests by tenant and priority (``*`` matches any). Every limit that
matches a request applies, and each limit is one shared bucket: ``tenant="*",
priority="batch", requests_per_s=5`` caps all batch traffic together at 5 requests/s,
while a limit naming one tenant caps that tenant alone. A request is admitted only when
every matching bucket has room, and then debits all of them (all or nothing).

Buckets hold ``rate * burst_s`` units. A request larger than a whole bucket is admitted
when the bucket is full and leaves it in debt, so big prompts are slowed, never starved.
Time comes from an injected clock (monotonic seconds), so tests drive it by hand.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from controlplane.clock import Clock, SystemClock
from controlplane.errors import ConfigError, Problem

WILDCARD = "*"


@dataclass(frozen=True)
class Limit:
    """Requests/s and tokens/s allowed to the traffic this rule matches (None: unlimited)."""

    tenant: str = WILDCARD
    priority: str = WILDCARD
    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    burst_s: float = 1.0

    def matches(self, tenant: str, priority: str) -> bool:
        return self.tenant in (WILDCARD, tenant) and self.priority in (WILDCARD, priority)

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.priority)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_limits(items: Iterable[Mapping[str, Any]], source: str = "limits") -> list[Limit]:
    """Validate limits given as mappings (JSON, YAML); every problem is reported at once."""
    out: list[Limit] = []
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    allowed = {"tenant", "priority", "requests_per_s", "tokens_per_s", "burst_s"}
    for i, item in enumerate(items):
        where = f"[{i}]"
        if not isinstance(item, Mapping):
            problems.append(Problem(source, where, "expected an object"))
            continue
        unknown = sorted(set(item) - allowed)
        if unknown:
            problems.append(Problem(source, where, f"unknown fields: {', '.join(unknown)}"))
            continue
        tenant, priority = item.get("tenant", WILDCARD), item.get("priority", WILDCARD)
        bad = False
        for name in ("tenant", "priority"):
            value = item.get(name, WILDCARD)
            if not isinstance(value, str) or not value:
                problems.append(Problem(source, f"{where}.{name}", "expected a non-empty string"))
                bad = True
        for name in ("requests_per_s", "tokens_per_s", "burst_s"):
            value = item.get(name)
            if value is None and name != "burst_s":
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(
                    Problem(source, f"{where}.{name}", f"expected a number > 0 (got {value!r})")
                )
                bad = True
        if bad:
            continue
        if (tenant, priority) in seen:
            problems.append(
                Problem(source, where, f"duplicate limit for tenant={tenant} priority={priority}")
            )
            continue
        seen.add((tenant, priority))
        out.append(
            Limit(
                tenant=tenant,
                priority=priority,
                requests_per_s=_opt_float(item.get("requests_per_s")),
                tokens_per_s=_opt_float(item.get("tokens_per_s")),
                burst_s=float(item.get("burst_s", 1.0)),
            )
        )
    if problems:
        raise ConfigError(problems)
    return out


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


class TokenBucket:
    """``rate`` units per second up to ``capacity``; starts full."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self._t = now

    def refill(self, now: float) -> None:
        if now > self._t:
            self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = max(self._t, now)

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` fits (0 when it fits now); call ``refill`` first."""
        need = min(cost, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    limited_by: tuple[str, str] | None = None  # the (tenant, priority) rule that refused

    @property
    def retry_after_header(self) -> str:
        # Retry-After takes whole seconds; round up so a client that obeys it gets in.
        return str(max(1, math.ceil(self.retry_after_s)))


class Admission:
    """Thread-safe admission control; the check is constant work per matching rule."""

    def __init__(self, limits: Iterable[Limit] = (), *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._limits: list[Limit] = []
        self._buckets: dict[tuple[str, str], tuple[TokenBucket | None, TokenBucket | None]] = {}
        self.set_limits(limits)

    @property
    def limits(self) -> list[Limit]:
        with self._lock:
            return list(self._limits)

    def set_limits(self, limits: Iterable[Limit]) -> None:
        """Replace the rules; buckets of rules whose rates did not change keep their level."""
        new = list(limits)
        now = self._clock.monotonic()
        with self._lock:
            old = {lim.key: lim for lim in self._limits}
            buckets: dict[tuple[str, str], tuple[TokenBucket | None, TokenBucket | None]] = {}
            for lim in new:
                if old.get(lim.key) == lim and lim.key in self._buckets:
                    buckets[lim.key] = self._buckets[lim.key]
                    continue
                buckets[lim.key] = (
                    _bucket(lim.requests_per_s, lim.burst_s, 1.0, now),
                    _bucket(lim.tokens_per_s, lim.burst_s, 1.0, now),
                )
            self._limits, self._buckets = new, buckets

    def check(self, tenant: str, priority: str, tokens: int) -> Decision:
        """Admit one request of ``tokens`` estimated tokens, or say how long to wait."""
        now = self._clock.monotonic()
        with self._lock:
            matching = [lim for lim in self._limits if lim.matches(tenant, priority)]
            worst = Decision(True)
            for lim in matching:
                for bucket, cost in zip(self._buckets[lim.key], (1.0, float(tokens)), strict=True):
                    if bucket is None:
                        continue
                    bucket.refill(now)
                    wait = bucket.wait_for(cost)
                    if wait > worst.retry_after_s:
                        worst = Decision(False, wait, lim.key)
            if not worst.allowed:
                return worst
            for lim in matching:
                for bucket, cost in zip(self._buckets[lim.key], (1.0, float(tokens)), strict=True):
                    if bucket is not None:
                        bucket.level -= cost
            return worst


def _bucket(rate: float | None, burst_s: float, floor: float, now: float) -> TokenBucket | None:
    if rate is None:
        return None
    return TokenBucket(rate, max(rate * burst_s, floor), now)
