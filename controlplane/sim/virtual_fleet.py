"""A ``Fleet`` of simulated replicas in virtual time, for backtests.

Each replica owns an ``Engine``; starting one launches an engine that serves after the
cold start; draining stops routing to it and it becomes DRAINED once its engine is empty
(then STOPPED if the drain came from ``scale_to``). GPU time is counted from start to stop,
cold start included, as a cloud bill would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controlplane.clock import Clock
from controlplane.fleet.base import (
    AdmissionLimit,
    FleetError,
    Replica,
    ReplicaState,
    UnknownReplica,
    plan_scale,
)
from controlplane.sim.calibration import EngineParams
from controlplane.sim.engine import Engine


@dataclass
class VirtualReplica:
    id: str
    pool: str
    engine: Engine
    state: ReplicaState
    started_at: float
    ready_at: float
    stopped_at: float | None = None
    stop_when_drained: bool = False
    gpus: int = 1

    def snapshot(self) -> Replica:
        return Replica(
            id=self.id,
            pool=self.pool,
            state=self.state,
            started_at=self.started_at,
            ready_at=self.ready_at,
            stopped_at=self.stopped_at,
            in_flight=self.engine.in_flight(),
            gpus=self.gpus,
        )


class VirtualFleet:
    """Implements ``controlplane.fleet.base.Fleet`` over engines; times come from ``clock``
    (epoch seconds) and engines run on offsets from ``epoch``."""

    def __init__(
        self,
        params: EngineParams,
        clock: Clock,
        *,
        epoch: float,
        cold_start_s: float | None = None,
        gpus_per_replica: int = 1,
        pools: Sequence[str] = ("sim",),
    ) -> None:
        self.params = params
        self.clock = clock
        self.epoch = epoch
        self.cold_start_s = params.cold_start_s if cold_start_s is None else cold_start_s
        self.gpus_per_replica = gpus_per_replica
        self.pools = set(pools)
        self._replicas: dict[str, VirtualReplica] = {}
        self._limits: dict[str, list[AdmissionLimit]] = {}
        self._ids = itertools.count(1)
        # Requests cut by stops, for the backtest to count; it empties the list.
        self.cut_requests: list[str] = []
        # Whether a replica has an engine iteration in progress (set by the backtest): its
        # engine may already show requests finished that finish only when it ends.
        self.busy: Callable[[str], bool] = lambda replica_id: False

    # -- helpers for the backtest -------------------------------------------------------

    def _t(self) -> float:
        return self.clock.now() - self.epoch

    def all_replicas(self) -> list[VirtualReplica]:
        return list(self._replicas.values())

    def get(self, replica_id: str) -> VirtualReplica:
        try:
            return self._replicas[replica_id]
        except KeyError:
            raise UnknownReplica(replica_id) from None

    def start_warm(self, pool: str) -> VirtualReplica:
        """A replica already serving at the current time (the fleet a backtest begins with)."""
        r = self._launch(pool, cold_start_s=0.0)
        r.state = ReplicaState.SERVING
        return r

    def promote(self, replica_id: str) -> bool:
        """STARTING -> SERVING once the cold start is over; True if it changed."""
        r = self.get(replica_id)
        # The tolerance absorbs rounding of epoch + offset - epoch.
        if r.state is ReplicaState.STARTING and self._t() + 1e-6 >= r.ready_at:
            r.state = ReplicaState.SERVING
            return True
        return False

    def settle(self, replica_id: str) -> None:
        """Called when a replica's engine may have emptied: finish its drain."""
        r = self.get(replica_id)
        if r.state is ReplicaState.DRAINING and r.engine.in_flight() == 0 and not self.busy(r.id):
            if r.stop_when_drained:
                self._stop(r)
            else:
                r.state = ReplicaState.DRAINED

    def gpu_seconds(self, until_t: float) -> float:
        total = 0.0
        for r in self._replicas.values():
            end = r.stopped_at if r.stopped_at is not None else until_t
            total += max(0.0, end - r.started_at) * r.gpus
        return total

    def _launch(self, pool: str, cold_start_s: float | None = None) -> VirtualReplica:
        if pool not in self.pools:
            raise FleetError(f"unknown pool {pool!r}")
        now = self._t()
        delay = self.cold_start_s if cold_start_s is None else cold_start_s
        rid = f"{pool}-{next(self._ids)}"
        r = VirtualReplica(
            id=rid,
            pool=pool,
            engine=Engine.launch(self.params, now, delay),
            state=ReplicaState.STARTING,
            started_at=now,
            ready_at=now + delay,
            gpus=self.gpus_per_replica,
        )
        self._replicas[rid] = r
        return r

    def _stop(self, r: VirtualReplica) -> list[str]:
        """Stop now; returns the ids of requests cut."""
        cut = list(r.engine.request_ids())
        for rid in cut:
            r.engine.cancel(rid, self._t())
        self.cut_requests.extend(cut)
        r.state = ReplicaState.STOPPED
        r.stopped_at = self._t()
        return cut

    # -- Fleet protocol -----------------------------------------------------------------

    def replicas(self, pool: str) -> list[Replica]:
        out = []
        for r in self._replicas.values():
            if r.pool != pool or r.state is ReplicaState.STOPPED:
                continue
            self.promote(r.id)
            out.append(r.snapshot())
        return out

    def start(self, pool: str) -> Replica:
        return self._launch(pool).snapshot()

    def stop(self, replica_id: str) -> None:
        r = self.get(replica_id)
        if r.state is not ReplicaState.STOPPED:
            self._stop(r)

    def drain(self, replica_id: str) -> None:
        self._drain(self.get(replica_id), stop_when_drained=False)

    def _drain(self, r: VirtualReplica, *, stop_when_drained: bool) -> None:
        if r.state in (ReplicaState.STOPPED, ReplicaState.FAILED):
            raise FleetError(f"cannot drain {r.id}: it is {r.state}")
        r.state = ReplicaState.DRAINING
        r.stop_when_drained = stop_when_drained
        self.settle(r.id)

    def undrain(self, replica_id: str) -> None:
        r = self.get(replica_id)
        if r.state not in (ReplicaState.DRAINING, ReplicaState.DRAINED):
            raise FleetError(f"cannot undrain {r.id}: it is {r.state}, not draining")
        r.stop_when_drained = False
        ready = self._t() + 1e-6 >= r.ready_at
        r.state = ReplicaState.SERVING if ready else ReplicaState.STARTING

    def scale_to(self, pool: str, n: int) -> list[str]:
        undrain, start, drain = plan_scale(self.replicas(pool), n)
        touched = []
        for rid in undrain:
            self.undrain(rid)
            touched.append(rid)
        for _ in range(start):
            touched.append(self._launch(pool).id)
        for rid in drain:
            r = self.get(rid)
            if r.state is ReplicaState.STARTING:
                self._stop(r)  # nothing to drain: it never served
            else:
                self._drain(r, stop_when_drained=True)
            touched.append(rid)
        return touched

    def set_admission_limits(self, pool: str, limits: Sequence[AdmissionLimit]) -> None:
        if pool not in self.pools:
            raise FleetError(f"unknown pool {pool!r}")
        self._limits[pool] = list(limits)

    def admission_limits(self, pool: str) -> list[AdmissionLimit]:
        return list(self._limits.get(pool, []))
