"""``governor backtest``: replay traffic through a policy in virtual time and report.

Traffic comes from exactly one of: ``--trace FILE`` (Azure CSV format), ``--profile KIND``
(the shipped fitted profile, ``--duration`` seconds), ``--pattern SPEC`` (synthetic), or
``--from-store --since T --until T`` (recorded ``requests`` rows).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any

from controlplane.sim.errors import SimError
from controlplane.sim.traffic import Arrival


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backtest",
        help="replay a trace through a scaling policy in virtual time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", metavar="FILE", help="trace in the Azure CSV format")
    src.add_argument("--profile", metavar="KIND", help="fitted profile kind: conv or code")
    src.add_argument("--pattern", metavar="SPEC", help="synthetic, e.g. flash:2:20:600")
    src.add_argument("--from-store", action="store_true", help="recorded requests as trace")
    p.add_argument("--since", help="with --from-store: RFC 3339 or unix seconds")
    p.add_argument("--until", help="with --from-store: RFC 3339 or unix seconds")
    p.add_argument("--pool", default="", help="with --from-store: only this pool")
    p.add_argument("--config", help="governor.yaml (store for --from-store, pool $/GPU-hour)")
    p.add_argument("--data-dir", help="embedded store directory (overrides the config)")
    p.add_argument("--policy", default="static", help="policy name (default static)")
    p.add_argument(
        "--policy-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy option, repeatable (numbers are parsed)",
    )
    p.add_argument("--replicas", type=int, default=1, help="replicas serving at the start")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=64)
    p.add_argument("--rate-multiplier", type=float, default=1.0)
    p.add_argument("--time-compression", type=float, default=1.0)
    p.add_argument(
        "--duration",
        type=float,
        default=3600.0,
        help="seconds of traffic for --profile/--pattern, or a trace slice",
    )
    p.add_argument("--start", type=float, default=0.0, help="trace slice start (seconds)")
    p.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    p.add_argument("--tpot-slo-ms", type=float, default=100.0)
    p.add_argument("--cold-start-s", type=float, default=None)
    p.add_argument(
        "--gpu-hour-usd",
        type=float,
        default=None,
        help="$/GPU-hour (default: the config pool's, else 2.5)",
    )
    p.add_argument("--mix", help="tenants by weight: tenant:weight[:priority],...")
    p.add_argument(
        "--engine", default="llama31-8b-h100-vllm", help="named engine configuration (docs/SIM.md)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SimError(f"--policy-opt {pair!r}: expected KEY=VALUE")
        value: Any = raw
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def _arrivals(args: argparse.Namespace, cfg: Any) -> Iterable[Arrival]:
    from controlplane.sim import traffic
    from controlplane.sim.profile import load_profile, profile_arrivals

    mix = traffic.Mix.parse(args.mix) if args.mix else None
    common = dict(
        rate_multiplier=args.rate_multiplier,
        time_compression=args.time_compression,
        mix=mix,
        seed=args.seed,
    )
    if args.profile:
        return profile_arrivals(load_profile(args.profile), args.duration, **common)
    if args.pattern:
        pattern = traffic.parse_pattern(args.pattern)
        tokens = traffic.lognormal_tokens(1155, 0.96, 211, 0.77)  # Azure conv means/CVs
        return traffic.poisson_arrivals(pattern, args.duration, tokens, **common)
    if args.from_store:
        trace = _store_trace(args, cfg)
    else:
        trace = traffic.read_azure_csv(args.trace)
    if args.start or args.duration != 3600.0:
        trace = trace.slice(args.start, args.duration)
    return traffic.replay(trace.rows, **common)


def _store_trace(args: argparse.Namespace, cfg: Any) -> Any:
    from controlplane.config import StoreConfig
    from controlplane.sim.store_trace import parse_time, read_store_trace
    from controlplane.store import open_store

    if not args.since or not args.until:
        raise SimError("--from-store needs --since and --until")
    since, until = parse_time(args.since, "--since"), parse_time(args.until, "--until")
    store_cfg = cfg.store if cfg is not None else StoreConfig.model_validate({})
    store = open_store(store_cfg, data_dir=args.data_dir)
    try:
        return read_store_trace(store, since, until, pool=args.pool)
    finally:
        store.close()


def _run(args: argparse.Namespace) -> int:
    from controlplane.config import load_config
    from controlplane.sim.backtest import BacktestConfig, run_backtest
    from controlplane.sim.calibration import get_params

    cfg = load_config(args.config) if args.config else None
    price = args.gpu_hour_usd
    gpus = 1
    if cfg is not None and cfg.pools:
        pool = next((p for p in cfg.pools if p.name == args.pool), cfg.pools[0])
        gpus = pool.gpus_per_replica
        if price is None and pool.gpu_hour_usd > 0:
            price = pool.gpu_hour_usd
    config = BacktestConfig(
        policy=args.policy,
        policy_options=_options(args.policy_opt),
        replicas=args.replicas,
        min_replicas=min(args.min_replicas, args.replicas),
        max_replicas=max(args.max_replicas, args.replicas),
        ttft_slo_s=args.ttft_slo_ms / 1000,
        tpot_slo_s=args.tpot_slo_ms / 1000,
        cold_start_s=args.cold_start_s,
        gpu_hour_usd=2.5 if price is None else price,
        gpus_per_replica=gpus,
        params=get_params(args.engine),
        seed=args.seed,
    )
    report = run_backtest(_arrivals(args, cfg), config)
    if report.requests == 0:
        raise SimError("the traffic source produced no requests")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text())
    return 0
