"""The ``Fleet`` protocol: what a policy may do to a pool of serving replicas.

One protocol, several implementations: the local process fleet (``fleet/local.py``), the
virtual fleet of backtests (``sim/virtual_fleet.py``) and, later, Kubernetes. Policies only
see this protocol and a clock, so the code that decides in a backtest is the code that
runs live.

Replica lifecycle::

    start -> STARTING --(cold start done)--> SERVING --drain--> DRAINING --(idle)--> DRAINED
                                               ^                    |                   |
                                               +------undrain-------+-------------------+
    any state --stop--> STOPPED (in-flight requests are cut)      crash/XID -> FAILED

Only SERVING replicas receive new requests. ``scale_to`` counts STARTING and SERVING
replicas ("active"); DRAINING/DRAINED ones do not count. A replica drained by
``scale_to`` is stopped by the fleet once DRAINED; one drained by ``drain`` stays DRAINED
(kept warm, e.g. for maintenance) until ``undrain`` or ``stop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from controlplane.errors import GovernorError


class FleetError(GovernorError):
    """The fleet could not do what was asked."""


class UnknownReplica(FleetError, KeyError):
    """No replica with that id in the pool."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        super().__init__(f"unknown replica {replica_id!r}")

    def __str__(self) -> str:  # KeyError would quote the message again
        return f"unknown replica {self.replica_id!r}"


class ReplicaState(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    DRAINED = "drained"
    STOPPED = "stopped"
    FAILED = "failed"


ACTIVE_STATES = frozenset({ReplicaState.STARTING, ReplicaState.SERVING})
WARM_STATES = frozenset({ReplicaState.DRAINING, ReplicaState.DRAINED})


@dataclass(frozen=True)
class Replica:
    """A snapshot of one replica; ``url`` is empty for virtual replicas."""

    id: str
    pool: str
    state: ReplicaState
    started_at: float
    ready_at: float | None = None
    stopped_at: float | None = None
    in_flight: int = 0
    gpus: int = 1
    url: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class AdmissionLimit:
    """A token bucket on new requests of a tenant (``"*"``: every tenant) and priority.

    ``None`` rates mean unlimited on that axis; ``burst_s`` is the bucket depth in seconds
    of the rate. Priorities follow vLLM: a lower number is served first.
    """

    tenant: str = "*"
    priority: int | None = None
    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    burst_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "tokens_per_s"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise FleetError(f"admission limit {name} must be >= 0, got {v}")
        if self.burst_s <= 0:
            raise FleetError(f"admission limit burst_s must be > 0, got {self.burst_s}")


class Fleet(Protocol):
    """Actuator over pools of replicas. Methods return promptly; state changes that take
    time (cold start, drain) show up in later ``replicas()`` snapshots."""

    def replicas(self, pool: str) -> list[Replica]:
        """Every replica of the pool that is not STOPPED, oldest first."""
        ...

    def start(self, pool: str) -> Replica:
        """Launch one replica; it is STARTING until its cold start completes."""
        ...

    def stop(self, replica_id: str) -> None:
        """Stop a replica now; its in-flight requests are cut."""
        ...

    def drain(self, replica_id: str) -> None:
        """Stop routing new requests to the replica; it is DRAINED once idle."""
        ...

    def undrain(self, replica_id: str) -> None:
        """Put a DRAINING or DRAINED replica back into service."""
        ...

    def scale_to(self, pool: str, n: int) -> list[str]:
        """Make the count of active replicas ``n``: undrain or start to grow, drain the
        newest to shrink (stopped once drained). Returns the ids of replicas acted on."""
        ...

    def set_admission_limits(self, pool: str, limits: Sequence[AdmissionLimit]) -> None:
        """Replace the pool's admission limits (an empty list removes every limit)."""
        ...

    def admission_limits(self, pool: str) -> list[AdmissionLimit]: ...


def active_count(replicas: Sequence[Replica]) -> int:
    return sum(1 for r in replicas if r.active)


def plan_scale(replicas: Sequence[Replica], n: int) -> tuple[list[str], int, list[str]]:
    """Shared ``scale_to`` arithmetic: (ids to undrain, replicas to start, ids to drain).

    Growing reuses DRAINING/DRAINED replicas first (they are warm), then starts new ones;
    shrinking drains STARTING replicas before SERVING ones (they serve nobody yet),
    newest first.
    """
    if n < 0:
        raise FleetError(f"cannot scale to {n} replicas")
    active = [r for r in replicas if r.active]
    if n > len(active):
        draining = [r for r in replicas if r.state in WARM_STATES]
        draining.sort(key=lambda r: r.started_at, reverse=True)
        undrain = [r.id for r in draining[: n - len(active)]]
        return undrain, n - len(active) - len(undrain), []
    if n < len(active):
        # Ties on start time go to the later-listed replica (the newer one).
        order = sorted(
            enumerate(active),
            key=lambda ir: (ir[1].state is ReplicaState.SERVING, -ir[1].started_at, -ir[0]),
        )
        return [], 0, [r.id for _, r in order[: len(active) - n]]
    return [], 0, []
