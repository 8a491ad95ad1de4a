"""The calibration table of docs/SIM.md: simulated vs published TTFT and TPOT.

    .venv/bin/python -m bench.sim_calibration

Each row replays the published benchmark's workload shape through one simulated engine in
virtual time (deterministic; no wall-clock dependence) and prints the published figure
beside the simulated one.
"""

from __future__ import annotations

import math

from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM, LLAMA31_8B_H200_VLLM
from controlplane.sim.single import Summary, poisson, run_engine, sharegpt_like, summarize
from controlplane.sim.traffic import lognormal_tokens

LAMBDA_IN = [13, 25, 27, 10, 329, 29, 399, 328, 4, 205]
LAMBDA_OUT = [120, 429, 233, 194, 101, 741, 9, 3, 6, 31]


def row(
    label: str,
    source: str,
    s: Summary,
    pub_ttft: float | None,
    pub_tpot: float | None,
    ttft_kind: str = "median",
) -> None:
    sim_ttft = s.mean_ttft_ms if ttft_kind == "mean" else s.median_ttft_ms

    def ratio(sim: float, pub: float | None) -> str:
        return "-" if pub is None else f"{sim / pub:.2f}"

    pt = "-" if pub_ttft is None else f"{pub_ttft:.1f}"
    pp = "-" if pub_tpot is None else f"{pub_tpot:.2f}"
    print(
        f"| {label} | {source} | {pt} | {sim_ttft:.1f} | {ratio(sim_ttft, pub_ttft)} | "
        f"{pp} | {s.median_tpot_ms:.2f} | {ratio(s.median_tpot_ms, pub_tpot)} | "
        f"{s.request_throughput:.2f} |"
    )


def main() -> None:
    print(
        "| workload | source | published TTFT ms | simulated | ratio | published TPOT ms "
        "| simulated | ratio | sim req/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    h100, h200 = LLAMA31_8B_H100_VLLM, LLAMA31_8B_H200_VLLM
    s = summarize(
        run_engine(h100, [(0.0, i, o) for i, o in zip(LAMBDA_IN, LAMBDA_OUT, strict=True)])
    )
    row("H100, 10 ShareGPT prompts at once (mean TTFT)", "[L]", s, 62.43, 7.558, "mean")
    share = sharegpt_like(200, seed=1)
    for qps, pt, pi in (
        (1.0, 22.76, 7.649),
        (4.0, 25.52, 9.710),
        (16.0, 18317.4, 39.92),
        (math.inf, 28483.7, 91.78),
    ):
        s = summarize(run_engine(h200, poisson(qps, share, seed=2)))
        row(f"H200, 200 ShareGPT prompts, {qps:g} QPS", "[C]", s, pt, pi)
    s = summarize(run_engine(h100, poisson(math.inf, sharegpt_like(1000, seed=3))))
    row("1000 ShareGPT prompts at once (GPU not stated)", "[P]", s, 9459.7, 48.84)
    print("\nModel-only sweep, H100, Azure-conv-like sizes (lognormal, mean 1155 in / 211 out):")
    print("| req/s | median TTFT ms | p99 TTFT ms | median TPOT ms | output tok/s |")
    print("|---|---|---|---|---|")
    import random

    sampler = lognormal_tokens(1155, 0.96, 211, 0.77)
    rng = random.Random(7)
    lengths = [sampler(rng) for _ in range(3000)]
    for rate in (1, 4, 8, 12, 16):
        s = summarize(run_engine(h100, poisson(rate, lengths[: int(rate * 180)], seed=5)))
        print(
            f"| {rate} | {s.median_ttft_ms:.0f} | {s.p99_ttft_ms:.0f} | "
            f"{s.median_tpot_ms:.1f} | {s.output_throughput:.0f} |"
        )


if __name__ == "__main__":
    main()
