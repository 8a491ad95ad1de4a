"""``PolicyLoop``: gather signals, ask the policy, act on the fleet; on an injected clock.

Live, a component calls ``tick()`` every ``policy.interval_s`` of real time; a backtest
calls it on a ``ManualClock`` at the same virtual times. Nothing here knows which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.clock import Clock
from controlplane.fleet.base import Fleet, FleetError, active_count
from controlplane.policy.base import Decision, Policy, PolicyError, SignalSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    ts: float
    pool: str
    policy: str
    kind: str  # scale_up | scale_down | limits
    from_replicas: int
    to_replicas: int
    reason: str
    dry_run: bool = False
    error: str = ""

    @property
    def direction(self) -> int:
        return (self.to_replicas > self.from_replicas) - (self.to_replicas < self.from_replicas)


class PolicyLoop:
    def __init__(
        self,
        policy: Policy,
        fleet: Fleet,
        signals: SignalSource,
        clock: Clock,
        *,
        pool: str,
        min_replicas: int = 0,
        max_replicas: int = 1_000_000,
        dry_run: bool = False,
        on_action: Callable[[Action], None] | None = None,
    ) -> None:
        if min_replicas > max_replicas:
            raise PolicyError(f"min_replicas {min_replicas} > max_replicas {max_replicas}")
        self.policy = policy
        self.fleet = fleet
        self.source = signals
        self.clock = clock
        self.pool = pool
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.dry_run = dry_run
        self.on_action = on_action or (lambda a: None)
        self.actions: list[Action] = []

    def tick(self) -> list[Action]:
        """One decision; returns the actions taken (or, in dry run, that would be)."""
        now = self.clock.now()
        sig = self.source.signals(self.pool, now, self.policy.window_s)
        decision: Decision = self.policy.decide(sig)
        taken: list[Action] = []
        current = active_count(sig.replicas)
        if decision.target_replicas is not None:
            target = max(self.min_replicas, min(self.max_replicas, decision.target_replicas))
            if target != current:
                kind = "scale_up" if target > current else "scale_down"
                error = ""
                if not self.dry_run:
                    try:
                        self.fleet.scale_to(self.pool, target)
                    except FleetError as exc:
                        error = str(exc)
                        log.warning("scaling %s to %d failed: %s", self.pool, target, exc)
                taken.append(
                    Action(
                        now,
                        self.pool,
                        self.policy.name,
                        kind,
                        current,
                        target,
                        decision.reason,
                        self.dry_run,
                        error,
                    )
                )
        if decision.admission_limits is not None:
            if not self.dry_run:
                self.fleet.set_admission_limits(self.pool, decision.admission_limits)
            taken.append(
                Action(
                    now,
                    self.pool,
                    self.policy.name,
                    "limits",
                    current,
                    current,
                    decision.reason,
                    self.dry_run,
                )
            )
        for a in taken:
            self.actions.append(a)
            self.on_action(a)
        return taken


def direction_changes(actions: list[Action]) -> int:
    """Flaps: how often consecutive scaling actions reverse direction."""
    dirs = [a.direction for a in actions if a.direction != 0 and not a.error]
    return sum(1 for a, b in zip(dirs, dirs[1:], strict=False) if a != b)
