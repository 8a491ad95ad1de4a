"""``governor slo check PATH`` and ``governor slo evaluate``."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("slo", help="validate and evaluate SLOs")
    ssub = p.add_subparsers(dest="slo_command", metavar="ACTION")
    ssub.required = True
    check = ssub.add_parser(
        "check", help="validate an SLO file or directory; print every problem and each SLO's tiers"
    )
    check.add_argument("path")
    check.set_defaults(func=_check)
    ev = ssub.add_parser("evaluate", help="run one evaluation cycle against the store, print JSON")
    ev.add_argument("--config", help="governor.yaml (its slos: path and store)")
    ev.add_argument("--slos", help="SLO file or directory (overrides the config's)")
    ev.add_argument("--data-dir", default=None, help="embedded store directory")
    ev.set_defaults(func=_evaluate)


def _check(args: argparse.Namespace) -> int:
    from controlplane.slo.sli import latency_threshold_exact
    from controlplane.slo.spec import load_slos
    from controlplane.slo.windows import format_duration

    slos = load_slos(args.path)  # SpecError is printed by main(), one line per problem
    for s in slos:
        tiers = ", ".join(
            f"{t.name} {format_duration(t.long_s)}/{format_duration(t.short_s)} >{t.factor:g}x"
            for t in s.alerting.tiers
        )
        print(f"{s.name}: {s.sli.kind} {s.objective * 100:.6g}% over {s.window.label} "
              f"({s.budgeting.method}); tiers: {tiers or 'none'}")  # fmt: skip
        if s.sli.kind == "latency" and not latency_threshold_exact(s.sli.threshold_s):
            print(f"  note: {s.sli.threshold_s:g} s is not a rollup bucket bound (two "
                  "significant digits): requests just under it count as bad")  # fmt: skip
    print(f"{args.path}: ok ({len(slos)} SLOs)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from controlplane.clock import SystemClock
    from controlplane.config import load_config, parse_config
    from controlplane.slo.evaluate import Evaluator
    from controlplane.slo.spec import load_slos
    from controlplane.store import open_store

    cfg = load_config(args.config) if args.config else parse_config(None)
    path = args.slos or (str(cfg.resolve(cfg.slos)) if cfg.slos else None)
    if path is None:
        from controlplane.errors import ConfigError, Problem

        raise ConfigError([Problem("slo evaluate", "--slos", "no SLOs: pass --slos or a "
                                   "--config with slos:")])  # fmt: skip
    slos = load_slos(path)
    store = open_store(cfg.store, data_dir=args.data_dir)
    try:
        ev = Evaluator(store, slos, clock=SystemClock(), external_url=cfg.alerting.external_url)
        out = {
            e.slo: {"state": e.state, "sli": e.sli, "budget_remaining": e.budget_remaining,
                    "burn_rates": e.burn_rates, "time_to_exhaustion_s": e.time_to_exhaustion_s,
                    "good": e.good, "total": e.total, "error": e.error}
            for e in ev.run_once()
        }  # fmt: skip
        ev.close()
    finally:
        store.close()
    print(json.dumps(out, indent=2))
    return 0
