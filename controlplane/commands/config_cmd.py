"""``governor config check FILE``."""

from __future__ import annotations

import argparse
from typing import Any

from controlplane.config import load_config


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="work with governor.yaml")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser("check", help="validate a config file; print every problem")
    check.add_argument("file")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)  # ConfigError is printed by main(), one line per problem
    print(f"{args.file}: ok ({len(cfg.pools)} pools, store {cfg.store.driver or 'auto'})")
    return 0
