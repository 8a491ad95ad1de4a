"""What a backtest measures: per-request outcomes, windowed signals for the policy, and
the final report."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from controlplane.fleet.base import ReplicaState
from controlplane.policy.base import PoolSignals
from controlplane.policy.runner import Action
from controlplane.sim.engine import RequestTiming
from controlplane.sim.virtual_fleet import VirtualFleet

OK = "ok"
REJECTED = "rejected"  # no replica, admission limit, or engine refused the request
CUT = "cut"  # the replica serving it was stopped


class RequestLog:
    """Outcomes of every offered request plus short windows for policy signals."""

    def __init__(self, *, ttft_slo_s: float, tpot_slo_s: float, window_s: float) -> None:
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.window_s = window_s
        self.offered = 0
        self.rejected = 0
        self.cut = 0
        self.ttft: list[float] = []
        self.tpot: list[float] = []  # nan for single-token answers
        self.input_tokens = 0
        self.output_tokens = 0
        self.preemptions = 0
        self._arrivals: deque[float] = deque()
        self._done: deque[tuple[float, float, float, int, int]] = deque()

    def arrive(self, t: float) -> None:
        self.offered += 1
        self._arrivals.append(t)

    def reject(self) -> None:
        self.rejected += 1

    def cut_requests(self, n: int) -> None:
        self.cut += n

    def complete(self, timing: RequestTiming) -> None:
        ttft = timing.ttft_s if timing.ttft_s is not None else float("nan")
        tpot = timing.tpot_s if timing.tpot_s is not None else float("nan")
        self.ttft.append(ttft)
        self.tpot.append(tpot)
        self.input_tokens += timing.prompt_tokens
        self.output_tokens += timing.generation_tokens
        self.preemptions += timing.preemptions
        self._done.append(
            (timing.finish_s, ttft, tpot, timing.prompt_tokens, timing.generation_tokens)
        )

    def window(self, now_t: float, window_s: float) -> tuple[list[float], list[tuple[float, ...]]]:
        horizon = now_t - max(window_s, self.window_s)
        while self._arrivals and self._arrivals[0] < horizon:
            self._arrivals.popleft()
        while self._done and self._done[0][0] < horizon:
            self._done.popleft()
        start = now_t - window_s
        return (
            [a for a in self._arrivals if a >= start],
            [d for d in self._done if d[0] >= start],
        )


def _pct(values: np.ndarray, q: float) -> float | None:
    v = values[~np.isnan(values)]
    return float(np.percentile(v, q)) if v.size else None


class SimSignals:
    """``SignalSource`` over the simulated fleet: what the store would say live."""

    def __init__(self, fleet: VirtualFleet, log: RequestLog, *, epoch: float) -> None:
        self.fleet = fleet
        self.log = log
        self.epoch = epoch

    def signals(self, pool: str, now: float, window_s: float) -> PoolSignals:
        t = now - self.epoch
        arrivals, done = self.log.window(t, window_s)
        replicas = tuple(self.fleet.replicas(pool))
        serving = [
            r
            for r in self.fleet.all_replicas()
            if r.pool == pool and r.state is ReplicaState.SERVING
        ]
        stats = [r.engine.stats() for r in serving]
        ttft = np.asarray([d[1] for d in done], dtype=float)
        tpot = np.asarray([d[2] for d in done], dtype=float)
        span = max(window_s, 1e-9)
        good = ttft[~np.isnan(ttft)]
        return PoolSignals(
            pool=pool,
            now=now,
            window_s=window_s,
            replicas=replicas,
            arrival_rps=len(arrivals) / span,
            completed=len(done),
            ttft_p50_s=_pct(ttft, 50),
            ttft_p95_s=_pct(ttft, 95),
            ttft_p99_s=_pct(ttft, 99),
            tpot_p50_s=_pct(tpot, 50),
            tpot_p95_s=_pct(tpot, 95),
            ttft_attainment=(float(np.mean(good <= self.log.ttft_slo_s)) if good.size else None),
            ttft_slo_s=self.log.ttft_slo_s,
            waiting=sum(s.waiting for s in stats),
            running=sum(s.running for s in stats),
            kv_usage=float(np.mean([s.kv_usage for s in stats])) if stats else 0.0,
            input_tokens_per_s=sum(d[3] for d in done) / span,
            output_tokens_per_s=sum(d[4] for d in done) / span,
        )


@dataclass(frozen=True)
class BacktestReport:
    policy: str
    seed: int
    requests: int
    completed: int
    rejected: int
    cut: int
    ttft_slo_s: float
    tpot_slo_s: float
    ttft_attainment: float  # share of offered requests with TTFT <= SLO
    tpot_attainment: float  # share of offered requests with TPOT <= SLO (1-token: met)
    slo_attainment: float  # both
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p95_s: float | None
    tpot_p99_s: float | None
    simulated_s: float
    gpu_hours: float
    gpu_hour_usd: float
    cost_usd: float
    cost_per_1k_tokens_usd: float | None
    input_tokens: int
    output_tokens: int
    mean_replicas: float
    max_replicas: int
    preemptions: int
    direction_changes: int
    actions: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        cost = self.cost_per_1k_tokens_usd
        lines = [
            f"policy {self.policy}: {self.requests} requests over {self.simulated_s / 3600:.2f} h "
            f"simulated in {self.wall_s:.1f} s",
            f"  completed {self.completed}, rejected {self.rejected}, cut {self.cut}, "
            f"preemptions {self.preemptions}",
            f"  SLO attainment {self.slo_attainment:.2%} (TTFT <= {self.ttft_slo_s * 1000:.0f} "
            f"ms: {self.ttft_attainment:.2%}, TPOT <= {self.tpot_slo_s * 1000:.0f} ms: "
            f"{self.tpot_attainment:.2%})",
            f"  TTFT p50 {ms(self.ttft_p50_s)}  p95 {ms(self.ttft_p95_s)}  "
            f"p99 {ms(self.ttft_p99_s)}",
            f"  TPOT p50 {ms(self.tpot_p50_s)}  p95 {ms(self.tpot_p95_s)}  "
            f"p99 {ms(self.tpot_p99_s)}",
            f"  GPU-hours {self.gpu_hours:.2f} (mean {self.mean_replicas:.2f} replicas, max "
            f"{self.max_replicas}), cost ${self.cost_usd:.2f} at ${self.gpu_hour_usd}/GPU-h, "
            + ("-" if cost is None else f"${cost:.5f} per 1K tokens"),
            f"  actions {len(self.actions)}, direction changes {self.direction_changes}",
        ]
        return "\n".join(lines)


def build_report(
    log: RequestLog,
    *,
    policy: str,
    seed: int,
    simulated_s: float,
    gpu_seconds: float,
    replica_seconds: float,
    max_replicas: int,
    gpu_hour_usd: float,
    actions: list[Action],
    direction_changes: int,
    wall_s: float,
) -> BacktestReport:
    ttft = np.asarray(log.ttft, dtype=float)
    tpot = np.asarray(log.tpot, dtype=float)
    offered = max(log.offered, 1)
    ttft_ok = np.nan_to_num(ttft, nan=np.inf) <= log.ttft_slo_s
    tpot_ok = np.nan_to_num(tpot, nan=0.0) <= log.tpot_slo_s
    gpu_hours = gpu_seconds / 3600
    cost = gpu_hours * gpu_hour_usd
    tokens = log.input_tokens + log.output_tokens
    return BacktestReport(
        policy=policy,
        seed=seed,
        requests=log.offered,
        completed=len(log.ttft),
        rejected=log.rejected,
        cut=log.cut,
        ttft_slo_s=log.ttft_slo_s,
        tpot_slo_s=log.tpot_slo_s,
        ttft_attainment=float(ttft_ok.sum() / offered),
        tpot_attainment=float(tpot_ok.sum() / offered),
        slo_attainment=float((ttft_ok & tpot_ok).sum() / offered),
        ttft_p50_s=_pct(ttft, 50),
        ttft_p95_s=_pct(ttft, 95),
        ttft_p99_s=_pct(ttft, 99),
        tpot_p50_s=_pct(tpot, 50),
        tpot_p95_s=_pct(tpot, 95),
        tpot_p99_s=_pct(tpot, 99),
        simulated_s=simulated_s,
        gpu_hours=gpu_hours,
        gpu_hour_usd=gpu_hour_usd,
        cost_usd=cost,
        cost_per_1k_tokens_usd=(cost / tokens * 1000) if tokens else None,
        input_tokens=log.input_tokens,
        output_tokens=log.output_tokens,
        mean_replicas=replica_seconds / simulated_s if simulated_s > 0 else 0.0,
        max_replicas=max_replicas,
        preemptions=log.preemptions,
        direction_changes=direction_changes,
        actions=[asdict(a) for a in actions],
        wall_s=wall_s,
    )
