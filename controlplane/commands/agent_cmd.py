"""``governor agent``: serve this node's GPUs (NVML) as Prometheus ``/metrics``."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from typing import Any

from controlplane.errors import ConfigError, Problem

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_interval(text: str) -> float:
    """``"1s"``, ``"500ms"``, ``"2m"`` or plain seconds -> seconds (> 0)."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(
            [Problem("--interval", "", f"expected a duration like 1s, 500ms or 2m (got {text!r})")]
        )
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value <= 0:
        raise ConfigError([Problem("--interval", "", "must be greater than zero")])
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="serve this node's GPUs (NVML) as Prometheus /metrics")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9835, help="port (default 9835; 0 picks one)")
    p.add_argument("--interval", default="1s", help="sampling interval (default 1s)")
    p.add_argument("--node", default=None, help="node label (default: this host's name)")
    p.add_argument(
        "--simulated-gpus",
        type=int,
        default=0,
        metavar="N",
        help="serve N simulated H100s instead of NVML (demos, tests)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from collector.errors import NvmlUnavailable
    from collector.gpu import GpuSource, NvmlSource, default_node
    from collector.gpu_metrics import AgentServer
    from collector.gpu_sim import SimulatedGpus

    interval = parse_interval(args.interval)
    if args.simulated_gpus < 0:
        raise ConfigError([Problem("--simulated-gpus", "", "must be 0 or more")])
    source: GpuSource = SimulatedGpus(args.simulated_gpus) if args.simulated_gpus else NvmlSource()
    server = AgentServer(
        source,
        node=args.node or default_node(),
        interval_s=interval,
        host=args.host,
        port=args.port,
    )
    try:
        server.start()
    except NvmlUnavailable as exc:
        print(
            f"error: NVML unavailable: {exc} (no NVIDIA driver here? "
            "--simulated-gpus N serves simulated GPUs)",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    kind = f"{args.simulated_gpus} simulated GPUs" if args.simulated_gpus else "NVML GPUs"
    print(f"governor agent serving {kind} on {server.url} (every {interval:g}s)", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        done.wait()
    finally:
        server.stop()
    return 0
