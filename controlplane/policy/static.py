"""The static policy: hold a fixed replica count. The baseline every other policy beats
(or not) on cost and attainment; it also restores the count after a replica fails."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.policy.base import Decision, PolicyError, PoolSignals, register_policy


@dataclass
class StaticPolicy:
    replicas: int
    interval_s: float = 30.0
    window_s: float = 60.0
    name: str = "static"

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise PolicyError(f"static policy: replicas must be >= 0, got {self.replicas}")
        if self.interval_s <= 0:
            raise PolicyError(f"static policy: interval_s must be > 0, got {self.interval_s}")

    def decide(self, signals: PoolSignals) -> Decision:
        if signals.active_replicas == self.replicas:
            return Decision()
        return Decision(
            target_replicas=self.replicas,
            reason=f"hold {self.replicas} replicas (have {signals.active_replicas})",
        )


@register_policy("static")
def static(replicas: int = 1, interval_s: float = 30.0, window_s: float = 60.0) -> StaticPolicy:
    return StaticPolicy(
        replicas=int(replicas), interval_s=float(interval_s), window_s=float(window_s)
    )
