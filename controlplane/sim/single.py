"""Drive one engine with open-loop arrivals in virtual time: the calibration harness.

``run_engine`` mimics ``vllm bench serve`` against a single replica (all requests at
once for rate ``inf``, or Poisson arrivals) and ``summarize`` reports the same figures
(request throughput, median/p99 TTFT, median TPOT) so they can be compared with published
benchmark results.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from controlplane.sim.calibration import EngineParams
from controlplane.sim.engine import Engine, RequestTiming, SimRequest


def run_engine(
    params: EngineParams, requests: Iterable[tuple[float, int, int]], *, fuse: bool = True
) -> list[RequestTiming]:
    """``requests`` are time-ordered ``(arrival_s, input_tokens, output_tokens)``."""
    engine = Engine(params)
    pending = list(requests)
    fe = params.frontend_s  # the engine sees a request after the API server's work
    done: list[RequestTiming] = []
    i = 0
    now = 0.0
    while i < len(pending) or engine.has_work():
        while i < len(pending) and pending[i][0] + fe <= now:
            t, inp, out = pending[i]
            engine.submit(SimRequest(str(i), t, inp, out))
            i += 1
        horizon = pending[i][0] + fe if i < len(pending) else math.inf
        res = engine.step(now, horizon_s=horizon if fuse else None)
        if res.idle:
            now = horizon
            continue
        now += res.duration_s
        done.extend(res.completed)
    return done


def poisson(
    rate: float, lengths: Sequence[tuple[int, int]], *, seed: int = 0
) -> list[tuple[float, int, int]]:
    """Arrival times for ``lengths``: all at 0 for ``rate`` inf, else Poisson."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for inp, o in lengths:
        if math.isfinite(rate):
            t += rng.expovariate(rate)
        out.append((t, inp, o))
    return out


def sharegpt_like(
    n: int, *, mean_in: float = 230.0, mean_out: float = 203.0, seed: int = 0, cv: float = 1.0
) -> list[tuple[int, int]]:
    """Lognormal stand-in for ShareGPT lengths (means of vLLM PR #18566's 1000 prompts)."""
    rng = random.Random(seed)
    s = math.sqrt(math.log(1 + cv * cv))

    def draw(mean: float) -> int:
        return max(4, min(4096, round(rng.lognormvariate(math.log(mean) - s * s / 2, s))))

    return [(draw(mean_in), draw(mean_out)) for _ in range(n)]


@dataclass(frozen=True)
class Summary:
    requests: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    p99_ttft_ms: float
    median_tpot_ms: float
    mean_tpot_ms: float


def summarize(timings: Sequence[RequestTiming]) -> Summary:
    ttft = np.asarray([t.ttft_s for t in timings if t.ttft_s is not None]) * 1000
    tpot = np.asarray([t.tpot_s for t in timings if t.tpot_s is not None]) * 1000
    start = min(t.arrival_s for t in timings)
    end = max(t.finish_s for t in timings)
    dur = max(end - start, 1e-9)
    return Summary(
        requests=len(timings),
        duration_s=dur,
        request_throughput=len(timings) / dur,
        output_throughput=sum(t.generation_tokens for t in timings) / dur,
        mean_ttft_ms=float(ttft.mean()),
        median_ttft_ms=float(np.median(ttft)),
        p99_ttft_ms=float(np.percentile(ttft, 99)),
        median_tpot_ms=float(np.median(tpot)) if tpot.size else float("nan"),
        mean_tpot_ms=float(tpot.mean()) if tpot.size else float("nan"),
    )
