"""The local fleet: simulated replica processes behind one router per pool.

``LocalFleet`` implements the ``Fleet`` protocol over real processes: ``start`` launches
``governor sim replica`` through a ``Supervisor`` (STARTING), and the replica is added to
the pool's router once its ``/health`` answers 200 (SERVING). ``drain`` asks the router
to stop sending it new requests (DRAINING); when the router reports it ``drained`` (no
request in flight) it is DRAINED and kept warm until ``undrain`` or ``stop``, except
replicas drained by ``scale_to``, whose process is then stopped (STOPPED). ``stop``
removes it from the router and ends the process at once. A process that exits on its own
is FAILED. Admission limits go to the router's ``/admin/limits``.

State changes that take time are observed, not awaited: every ``replicas()`` call checks
the processes and asks the router and starting replicas where they are (short timeouts),
so the methods return promptly as the protocol asks.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from controlplane.clock import Clock, SystemClock
from controlplane.fleet.base import (
    AdmissionLimit,
    FleetError,
    Replica,
    ReplicaState,
    UnknownReplica,
    plan_scale,
)
from controlplane.sim.supervisor import Child, Supervisor

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
# A starting replica that does not answer its health check this fast is asked again at the
# next observation; keeps ``replicas()`` prompt while processes boot.
HEALTH_TIMEOUT_S = 0.5
_ROUTED = frozenset({ReplicaState.SERVING, ReplicaState.DRAINING, ReplicaState.DRAINED})


@dataclass(frozen=True)
class LocalPool:
    """How to launch one pool's replicas and where its router listens."""

    name: str
    router_url: str
    engine: str = "llama31-8b-h100-vllm"
    served_model: str = ""
    cold_start_s: float = 5.0
    otlp_traces_endpoint: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass
class _Member:
    replica: Replica
    child: Child


def _limit_to_router(limit: AdmissionLimit) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tenant": limit.tenant,
        "priority": "*" if limit.priority is None else str(limit.priority),
        "burst_s": limit.burst_s,
    }
    if limit.requests_per_s is not None:
        out["requests_per_s"] = limit.requests_per_s
    if limit.tokens_per_s is not None:
        out["tokens_per_s"] = limit.tokens_per_s
    return out


class LocalFleet:
    def __init__(
        self,
        pools: Sequence[LocalPool],
        supervisor: Supervisor,
        *,
        clock: Clock | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self._pools: dict[str, LocalPool] = {p.name: p for p in pools}
        self._sup = supervisor
        self._clock = clock or SystemClock()
        self._http = http or httpx.Client(timeout=PROBE_TIMEOUT_S)
        self._lock = threading.RLock()
        self._members: dict[str, _Member] = {}
        self._seq = {p.name: itertools.count() for p in pools}
        self._limits: dict[str, list[AdmissionLimit]] = {p.name: [] for p in pools}
        self._stop_when_drained: set[str] = set()

    def _pool(self, name: str) -> LocalPool:
        pool = self._pools.get(name)
        if pool is None:
            raise FleetError(
                f"unknown pool {name!r}; local pools: {', '.join(sorted(self._pools))}"
            )
        return pool

    def _member(self, replica_id: str) -> _Member:
        m = self._members.get(replica_id)
        if m is None:
            raise UnknownReplica(replica_id)
        return m

    def _router(self, pool: LocalPool, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            resp = self._http.request(method, pool.router_url + path, **kw)
        except httpx.HTTPError as exc:
            raise FleetError(f"router of pool {pool.name} at {pool.router_url}: {exc}") from exc
        if resp.status_code >= 400:
            raise FleetError(
                f"router of pool {pool.name} refused {method} {path}: "
                f"{resp.status_code} {resp.text[:200]}"
            )
        body: dict[str, Any] = resp.json()
        return body

    def _set_state(self, m: _Member, state: ReplicaState, **changes: Any) -> None:
        m.replica = replace(m.replica, state=state, **changes)

    # -- Fleet protocol -----------------------------------------------------------------

    def replicas(self, pool: str) -> list[Replica]:
        p = self._pool(pool)
        with self._lock:
            self._refresh(p)
            members = [m for m in self._members.values() if m.replica.pool == pool]
            return [
                m.replica for m in sorted(members, key=lambda m: m.replica.started_at)
                if m.replica.state is not ReplicaState.STOPPED
            ]  # fmt: skip

    def start(self, pool: str) -> Replica:
        p = self._pool(pool)
        with self._lock:
            n = next(self._seq[pool])
            rid = f"{pool}-{n}"
            argv = [
                "sim", "replica", "--name", rid, "--pool", pool, "--engine", p.engine,
                "--cold-start-s", str(p.cold_start_s), "--seed", str(n), "--gpu-index", str(n),
            ]  # fmt: skip
            if p.served_model:
                argv += ["--served-model-name", p.served_model]
            if p.otlp_traces_endpoint:
                argv += ["--otlp-traces-endpoint", p.otlp_traces_endpoint]
            argv += list(p.extra_args)
            child = self._sup.spawn(rid, argv, listen=True)
            replica = Replica(
                id=rid, pool=pool, state=ReplicaState.STARTING,
                started_at=self._clock.now(), url=child.url,
            )  # fmt: skip
            self._members[rid] = _Member(replica, child)
            return replica

    def stop(self, replica_id: str) -> None:
        with self._lock:
            m = self._member(replica_id)
            p = self._pool(m.replica.pool)
            if m.replica.state in _ROUTED:
                try:
                    self._router(p, "DELETE", f"/admin/replicas/{replica_id}")
                except FleetError as exc:  # stopping must not depend on the router
                    log.warning("could not remove %s from the router: %s", replica_id, exc)
            self._sup.stop(m.child.name, grace_s=3.0)
            self._set_state(m, ReplicaState.STOPPED, stopped_at=self._clock.now(), in_flight=0)

    def drain(self, replica_id: str) -> None:
        with self._lock:
            m = self._member(replica_id)
            p = self._pool(m.replica.pool)
            state = m.replica.state
            if state is ReplicaState.STARTING:
                self.stop(replica_id)  # nothing in flight yet: draining is stopping
            elif state is ReplicaState.SERVING:
                self._router(p, "POST", f"/admin/replicas/{replica_id}/drain")
                self._set_state(m, ReplicaState.DRAINING)
                self._refresh(p)
            elif state not in (ReplicaState.DRAINING, ReplicaState.DRAINED):
                raise FleetError(f"cannot drain {replica_id}: it is {state.value}")

    def undrain(self, replica_id: str) -> None:
        with self._lock:
            m = self._member(replica_id)
            if m.replica.state not in (ReplicaState.DRAINING, ReplicaState.DRAINED):
                raise FleetError(f"cannot undrain {replica_id}: it is {m.replica.state.value}")
            self._stop_when_drained.discard(replica_id)
            self._router(
                self._pool(m.replica.pool), "POST", f"/admin/replicas/{replica_id}/undrain"
            )
            self._set_state(m, ReplicaState.SERVING)

    def scale_to(self, pool: str, n: int) -> list[str]:
        with self._lock:
            undrain, start, drain = plan_scale(self.replicas(pool), n)
            acted = []
            for rid in undrain:
                self.undrain(rid)
                acted.append(rid)
            for _ in range(start):
                acted.append(self.start(pool).id)
            for rid in drain:
                self._stop_when_drained.add(rid)
                self.drain(rid)
                acted.append(rid)
            return acted

    def set_admission_limits(self, pool: str, limits: Sequence[AdmissionLimit]) -> None:
        p = self._pool(pool)
        body = {"limits": [_limit_to_router(lim) for lim in limits]}
        self._router(p, "PUT", "/admin/limits", json=body)
        with self._lock:
            self._limits[pool] = list(limits)

    def admission_limits(self, pool: str) -> list[AdmissionLimit]:
        self._pool(pool)
        with self._lock:
            return list(self._limits[pool])

    # -- observation --------------------------------------------------------------------

    def _refresh(self, p: LocalPool) -> None:
        members = [m for m in self._members.values() if m.replica.pool == p.name]
        live = [m for m in members if m.replica.state is not ReplicaState.STOPPED]
        if not live:
            return
        now = self._clock.now()
        for m in live:
            if not m.child.alive() and m.replica.state is not ReplicaState.FAILED:
                log.warning("replica %s exited with %s", m.replica.id, m.child.process.returncode)
                self._set_state(m, ReplicaState.FAILED, stopped_at=now, in_flight=0)
                try:
                    self._router(p, "DELETE", f"/admin/replicas/{m.replica.id}")
                except FleetError:
                    pass  # it may never have been registered
        for m in live:
            if m.replica.state is ReplicaState.STARTING and self._healthy(m):
                self._router(p, "PUT", f"/admin/replicas/{m.replica.id}", json={"url": m.child.url})
                self._set_state(m, ReplicaState.SERVING, ready_at=now)
        if not any(m.replica.state in _ROUTED for m in live):
            return
        routed = {b["name"]: b for b in self._router(p, "GET", "/admin/replicas")["replicas"]}
        for m in live:
            b = routed.get(m.replica.id)
            if b is None or m.replica.state not in _ROUTED:
                continue
            self._set_state(m, m.replica.state, in_flight=int(b["outstanding"]))
            if m.replica.state is ReplicaState.DRAINING and b["state"] == "drained":
                if m.replica.id in self._stop_when_drained:
                    self._stop_when_drained.discard(m.replica.id)
                    self.stop(m.replica.id)
                else:
                    self._set_state(m, ReplicaState.DRAINED)

    def _healthy(self, m: _Member) -> bool:
        try:
            resp = self._http.get(m.child.url + "/health", timeout=HEALTH_TIMEOUT_S)
            return resp.status_code == 200
        except httpx.HTTPError:
            return False

    def urls(self, pool: str) -> Mapping[str, str]:
        """Replica id -> base URL of every replica of the pool not stopped."""
        return {r.id: r.url for r in self.replicas(pool)}

    def close(self) -> None:
        """Stop every replica this fleet started."""
        with self._lock:
            for rid, m in list(self._members.items()):
                if m.replica.state is not ReplicaState.STOPPED:
                    self.stop(rid)
        self._http.close()
