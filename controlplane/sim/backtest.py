"""Backtests: replay traffic through a virtual fleet in virtual time, a policy in charge.

A discrete-event loop over three kinds of events: request arrivals (open loop, from any
``Arrival`` iterator), engine iterations finishing (``Engine.step`` with the next arrival
or policy tick as its horizon, so quiet decode stretches are fused) and policy ticks (a
``PolicyLoop`` on a ``ManualClock``, acting on a ``VirtualFleet``). The router sends each
request to the serving replica with the fewest outstanding requests. Hours of traffic
replay in seconds; the same seed gives the same report.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.clock import ManualClock
from controlplane.fleet.base import AdmissionLimit, ReplicaState
from controlplane.policy.base import PolicyError, create_policy
from controlplane.policy.runner import PolicyLoop, direction_changes
from controlplane.sim.backtest_metrics import BacktestReport, RequestLog, SimSignals, build_report
from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM, EngineParams
from controlplane.sim.engine import RequestRejected, SimRequest, StepResult
from controlplane.sim.errors import BacktestError
from controlplane.sim.traffic import Arrival
from controlplane.sim.virtual_fleet import VirtualFleet, VirtualReplica

_STEP_DONE, _READY = 0, 1


@dataclass(frozen=True)
class BacktestConfig:
    policy: str = "static"
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    replicas: int = 1  # serving (warm) at the start
    min_replicas: int = 1
    max_replicas: int = 64
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    cold_start_s: float | None = None  # None: the engine parameters' cold start
    gpu_hour_usd: float = 2.5
    gpus_per_replica: int = 1
    pool: str = "sim"
    params: EngineParams = LLAMA31_8B_H100_VLLM
    seed: int = 0
    epoch: float = 1_700_000_000.0
    fuse: bool = True  # False: one event per engine iteration (slow; for checking)

    def __post_init__(self) -> None:
        problems = []
        if self.replicas < 0 or self.min_replicas < 0 or self.max_replicas < 1:
            problems.append("replica counts must be >= 0 (max >= 1)")
        if self.min_replicas > self.max_replicas:
            problems.append(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.ttft_slo_s <= 0 or self.tpot_slo_s <= 0:
            problems.append("SLO thresholds must be > 0")
        if self.gpu_hour_usd < 0:
            problems.append("gpu_hour_usd must be >= 0")
        if self.cold_start_s is not None and self.cold_start_s < 0:
            problems.append("cold_start_s must be >= 0")
        if problems:
            raise BacktestError("invalid backtest config: " + "; ".join(problems))


class _Admission:
    """Token buckets per admission limit, refilled on use (virtual time)."""

    def __init__(self) -> None:
        self._state: dict[AdmissionLimit, tuple[float, float, float]] = {}

    def admit(self, limits: list[AdmissionLimit], a: Arrival, t: float) -> bool:
        matching = [
            lim
            for lim in limits
            if lim.tenant in ("*", a.tenant) and lim.priority in (None, a.priority)
        ]
        updates = {}
        for lim in matching:
            req, tok, last = self._state.get(lim, (math.inf, math.inf, t))
            dt = t - last
            need_tok = a.input_tokens + a.output_tokens
            if lim.requests_per_s is not None:
                cap = lim.requests_per_s * lim.burst_s
                req = min(cap, req + dt * lim.requests_per_s) if req != math.inf else cap
                if req < 1:
                    return False
                req -= 1
            if lim.tokens_per_s is not None:
                cap = lim.tokens_per_s * lim.burst_s
                tok = min(cap, tok + dt * lim.tokens_per_s) if tok != math.inf else cap
                if tok < need_tok:
                    return False
                tok -= need_tok
            updates[lim] = (req, tok, t)
        self._state.update(updates)
        return True


class _Backtest:
    def __init__(self, cfg: BacktestConfig) -> None:
        self.cfg = cfg
        self.clock = ManualClock(cfg.epoch)
        self.fleet = VirtualFleet(
            cfg.params,
            self.clock,
            epoch=cfg.epoch,
            cold_start_s=cfg.cold_start_s,
            gpus_per_replica=cfg.gpus_per_replica,
            pools=[cfg.pool],
        )
        options = dict(cfg.policy_options)
        if cfg.policy == "static":
            options.setdefault("replicas", cfg.replicas)
        try:
            self.policy = create_policy(cfg.policy, **options)
        except PolicyError as exc:
            raise BacktestError(str(exc)) from exc
        self.log = RequestLog(
            ttft_slo_s=cfg.ttft_slo_s, tpot_slo_s=cfg.tpot_slo_s, window_s=self.policy.window_s
        )
        self.loop = PolicyLoop(
            self.policy,
            self.fleet,
            SimSignals(self.fleet, self.log, epoch=cfg.epoch),
            self.clock,
            pool=cfg.pool,
            min_replicas=cfg.min_replicas,
            max_replicas=cfg.max_replicas,
        )
        self.events: list[tuple[float, int, int, str, int]] = []
        self.outstanding: dict[str, int] = {}
        self.generation: dict[str, int] = {}
        self.step_started: dict[str, tuple[float, StepResult]] = {}
        self.seq = itertools.count()
        self.stepping: set[str] = set()
        self.fleet.busy = self.stepping.__contains__
        self.ready_scheduled: set[str] = set()
        self.admission = _Admission()
        self.next_arrival_t = math.inf
        self.next_tick_t = 0.0
        self.max_replicas_seen = 0
        self.ids = itertools.count()

    def _set_time(self, t: float) -> None:
        self.clock.set(self.cfg.epoch + t)

    def _start_step(self, r: VirtualReplica, t: float) -> None:
        if r.id in self.stepping or r.state not in (ReplicaState.SERVING, ReplicaState.DRAINING):
            return
        if self.cfg.fuse:
            # Fused runs stop at policy ticks; arrivals only *may* concern this replica, so
            # a run may pass them and is cut back if one is routed here (see _route).
            res = r.engine.step(t, horizon_s=self.next_tick_t, soft_horizon_s=self.next_arrival_t)
        else:
            res = r.engine.step(t)
        if res.idle:
            return
        self.stepping.add(r.id)
        self.step_started[r.id] = (t, res)
        gen = self.generation[r.id] = self.generation.get(r.id, 0) + 1
        heapq.heappush(self.events, (t + res.duration_s, next(self.seq), _STEP_DONE, r.id, gen))

    def _step_done(self, rid: str, gen: int, t: float) -> None:
        if gen != self.generation.get(rid):
            return  # superseded: the step was cut back and rescheduled
        _, res = self.step_started.pop(rid)
        self.stepping.discard(rid)
        r = self.fleet.get(rid)
        self.outstanding[rid] = self.outstanding.get(rid, 0) - len(res.completed)
        if r.state is ReplicaState.STOPPED:
            # Stopped mid-iteration: what this iteration would have finished is cut too
            # (the rest was counted when it stopped).
            self.log.cut_requests(len(res.completed))
            return
        for timing in res.completed:
            self.log.complete(timing)
        self.fleet.settle(rid)
        self._start_step(r, t)

    def _route(self, a: Arrival, t: float) -> None:
        self.log.arrive(t)
        if not self.admission.admit(self.fleet.admission_limits(self.cfg.pool), a, t):
            self.log.reject()
            return
        pool = [r for r in self.fleet.all_replicas() if r.pool == self.cfg.pool]
        cands = [r for r in pool if r.state is ReplicaState.SERVING]
        if not cands:  # nothing serving yet: queue at a starting replica
            cands = [r for r in pool if r.state is ReplicaState.STARTING]
        if not cands:
            self.log.reject()
            return
        # Least outstanding as the router sees it: a request counts until the iteration
        # that finishes it has ended. Stable min: the oldest replica wins ties.
        r = min(cands, key=lambda c: self.outstanding.get(c.id, 0))
        req = SimRequest(
            str(next(self.ids)), a.t_offset_s, a.input_tokens, a.output_tokens, priority=a.priority
        )
        try:
            r.engine.submit(req)
        except RequestRejected:
            self.log.reject()
            return
        self.outstanding[r.id] = self.outstanding.get(r.id, 0) + 1
        if r.id in self.stepping:
            started, _ = self.step_started[r.id]
            duration = r.engine.truncate(t)
            if duration is not None:
                gen = self.generation[r.id] = self.generation[r.id] + 1
                heapq.heappush(
                    self.events, (started + duration, next(self.seq), _STEP_DONE, r.id, gen)
                )
        self._start_step(r, t)

    def _tick(self, t: float) -> None:
        self.loop.tick()
        if self.fleet.cut_requests:
            self.log.cut_requests(len(self.fleet.cut_requests))
            self.fleet.cut_requests.clear()
        alive = 0
        for r in self.fleet.all_replicas():
            if r.state is not ReplicaState.STOPPED:
                alive += 1
            if r.state is ReplicaState.STARTING and r.id not in self.ready_scheduled:
                self.ready_scheduled.add(r.id)
                heapq.heappush(self.events, (r.ready_at, next(self.seq), _READY, r.id, 0))
            elif r.state in (ReplicaState.SERVING, ReplicaState.DRAINING):
                self._start_step(r, t)  # undrained replicas may have queued work
        self.max_replicas_seen = max(self.max_replicas_seen, alive)

    def run(self, arrivals: Iterable[Arrival]) -> BacktestReport:
        wall0 = time.perf_counter()
        for _ in range(self.cfg.replicas):
            self.fleet.start_warm(self.cfg.pool)
        self.max_replicas_seen = self.cfg.replicas
        it = iter(arrivals)
        nxt = next(it, None)
        last_t = 0.0
        prev_arrival = -math.inf
        # Requests reach the router and engine after the API server's frontend work; their
        # latencies still count from the client's arrival time.
        fe = self.cfg.params.frontend_s
        while True:
            self.next_arrival_t = nxt.t_offset_s + fe if nxt is not None else math.inf
            t_event = self.events[0][0] if self.events else math.inf
            if nxt is None and not self.events:
                break
            t_next = min(t_event, self.next_arrival_t, self.next_tick_t)
            self._set_time(t_next)
            last_t = max(last_t, t_next)
            if t_event == t_next:
                _, _, kind, rid, gen = heapq.heappop(self.events)
                if kind == _STEP_DONE:
                    self._step_done(rid, gen, t_next)
                else:
                    self.fleet.promote(rid)
                    self._start_step(self.fleet.get(rid), t_next)
            elif self.next_tick_t == t_next:
                self.next_tick_t += self.policy.interval_s
                self._tick(t_next)
            else:
                assert nxt is not None
                a = nxt
                if a.t_offset_s < prev_arrival:
                    raise BacktestError(
                        f"arrivals out of order: {a.t_offset_s} s after {prev_arrival} s"
                    )
                prev_arrival = a.t_offset_s
                nxt = next(it, None)
                self.next_arrival_t = nxt.t_offset_s + fe if nxt is not None else math.inf
                self._route(a, t_next)
        gpu_s = self.fleet.gpu_seconds(last_t)
        return build_report(
            self.log,
            policy=self.policy.name,
            seed=self.cfg.seed,
            simulated_s=last_t,
            gpu_seconds=gpu_s,
            replica_seconds=gpu_s / self.cfg.gpus_per_replica,
            max_replicas=self.max_replicas_seen,
            gpu_hour_usd=self.cfg.gpu_hour_usd,
            actions=self.loop.actions,
            direction_changes=direction_changes(self.loop.actions),
            wall_s=time.perf_counter() - wall0,
        )


def run_backtest(
    arrivals: Iterable[Arrival], config: BacktestConfig | None = None
) -> BacktestReport:
    """Replay ``arrivals`` (time-ordered) through a virtual fleet under ``config.policy``."""
    return _Backtest(config or BacktestConfig()).run(arrivals)
