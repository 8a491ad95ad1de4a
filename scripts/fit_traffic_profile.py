"""Fit the shipped traffic profile from Azure-format trace files given by path.

    .venv/bin/python scripts/fit_traffic_profile.py \
        conv=../shared/traces/azure_llm_2023_conv.csv \
        code=../shared/traces/azure_llm_2023_code.csv

Writes ``controlplane/sim/profiles/azure_llm_2023.json`` (statistics only, no requests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from controlplane.sim.profile import DEFAULT_PROFILE, dump_profiles, fit_profile
from controlplane.sim.traffic import read_azure_csv

NOTE = (
    "Fitted by scripts/fit_traffic_profile.py from the Azure LLM inference trace 2023 "
    "(Azure Public Dataset, CC-BY 4.0; Patel et al., Splitwise, ISCA 2024). "
    "Aggregate statistics only."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", help="KIND=PATH, e.g. conv=azure_llm_2023_conv.csv")
    ap.add_argument("--out", type=Path, default=DEFAULT_PROFILE)
    args = ap.parse_args()
    profiles = []
    for spec in args.traces:
        kind, _, path = spec.partition("=")
        trace = read_azure_csv(path)
        profiles.append(fit_profile(kind, trace.rows, source=Path(path).name))
    dump_profiles(profiles, args.out, note=NOTE)
    for p in profiles:
        print(
            f"{p.kind}: {p.requests} requests, {p.mean_rps:.2f} req/s, per-minute cv "
            f"{p.per_minute_cv:.2f}, second cv2 {p.second_cv2}, mean in/out "
            f"{p.mean_input_tokens}/{p.mean_output_tokens}, rank corr {p.token_rank_corr}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
