"""``governor demo``: the whole loop on one machine, no GPU, no cluster.

Starts, each as its own process: ``governor serve`` on an embedded store of its own with a
generated config (the pool, scrape targets for every replica's vLLM and GPU metrics, the
example SLOs when present), simulated replicas exporting their spans to serve's
``/v1/traces``, the router, and open-loop traffic from the Azure-fitted profile. Prints
the URLs and API tokens, then runs until Ctrl-C / SIGTERM (or ``--duration``) and stops
every process it started.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from controlplane import conventions as cv
from controlplane.errors import GovernorError

DEFAULT_DIR = os.path.join(cv.DEFAULT_DATA_DIR, "demo")
ENV_DEMO_DIR = "GOVERNOR_DEMO_DATA_DIR"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
STARTUP_TIMEOUT_S = 150.0


class DemoError(GovernorError):
    """The demo could not bring its fleet up."""


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a simulated fleet, traffic and Governor on this machine")
    p.add_argument(
        "--data-dir", default=None, help=f"demo state (default ${ENV_DEMO_DIR} or {DEFAULT_DIR})"
    )
    p.add_argument("--pool", default="chat-8b", help="pool name (default chat-8b)")
    p.add_argument("--replicas", type=int, default=3, help="simulated replicas (default 3)")
    p.add_argument("--cold-start-s", type=float, default=5.0, help="replica cold start")
    p.add_argument("--rate-multiplier", type=float, default=0.5, help="traffic x the Azure rate")
    p.add_argument("--profile", choices=("conv", "code"), default="conv", help="traffic profile")
    p.add_argument("--no-traffic", action="store_true", help="start no load generator")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.add_argument("--scrape-interval-s", type=float, default=5.0)
    p.add_argument(
        "--duration", type=float, default=None, help="stop by itself S seconds after serving"
    )
    p.set_defaults(func=run)


def _slos_dir() -> Path | None:
    here = Path(__file__).resolve().parents[2] / "examples" / "slos"
    for candidate in (Path.cwd() / "examples" / "slos", here):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def demo_config(
    *, pool: str, store_dir: Path, port: int, replica_urls: dict[str, str], scrape_s: float
) -> dict[str, Any]:
    targets: list[dict[str, str]] = []
    for rid, url in sorted(replica_urls.items()):
        targets.append({"url": f"{url}/metrics", "kind": "vllm", "pool": pool, "replica": rid})
        targets.append({"url": f"{url}/dcgm/metrics", "kind": "dcgm", "pool": pool, "replica": rid})
    cfg: dict[str, Any] = {
        "store": {"data_dir": str(store_dir)},
        "server": {"host": "127.0.0.1", "port": port},
        "pools": [
            {
                "name": pool,
                "model": MODEL,
                "engine": "vllm",
                "gpu_type": "H100",
                "gpus_per_replica": 1,
                "gpu_hour_usd": 2.5,
                "min_replicas": 1,
                "max_replicas": max(len(replica_urls), 1) * 2,
                "endpoints": sorted(replica_urls.values()),
            }
        ],  # fmt: skip
        "scrape": {"interval_s": scrape_s, "timeout_s": 3.0, "targets": targets},
    }
    slos = _slos_dir()
    if slos is not None:
        cfg["slos"] = str(slos)
    return cfg


def _check_args(args: argparse.Namespace) -> None:
    problems = []
    if args.replicas < 1:
        problems.append(f"--replicas must be at least 1 (got {args.replicas})")
    if args.rate_multiplier <= 0:
        problems.append(f"--rate-multiplier must be > 0 (got {args.rate_multiplier})")
    if args.cold_start_s < 0:
        problems.append(f"--cold-start-s must be >= 0 (got {args.cold_start_s})")
    if args.duration is not None and args.duration < 0:
        problems.append(f"--duration must be >= 0 (got {args.duration})")
    if args.scrape_interval_s <= 0:
        problems.append(f"--scrape-interval-s must be > 0 (got {args.scrape_interval_s})")
    if problems:
        raise DemoError("; ".join(problems))


def _wait(what: str, ok: Any, stop: threading.Event, timeout_s: float) -> None:
    """Poll ``ok()`` until true; raise naming ``what`` after ``timeout_s`` or on stop."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if stop.is_set():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not come up within {timeout_s:.0f} s")
        stop.wait(0.5)


def run(args: argparse.Namespace) -> int:
    import httpx

    from controlplane.config import parse_config
    from controlplane.fleet.base import ReplicaState
    from controlplane.fleet.local import LocalFleet, LocalPool
    from controlplane.sim.supervisor import Supervisor, free_port

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    _check_args(args)
    data_dir = Path(args.data_dir or os.environ.get(ENV_DEMO_DIR) or DEFAULT_DIR).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store_dir, log_dir = data_dir / "store", data_dir / "logs"
    stop = threading.Event()
    started = time.monotonic()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # second Ctrl-C: stop waiting for graceful shutdowns
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    sup = Supervisor(log_dir=log_dir, die_with_parent=True)
    http = httpx.Client(timeout=2.0)
    fleet: LocalFleet | None = None
    try:
        port = args.port or free_port()
        api = f"http://127.0.0.1:{port}"
        tokens = {role: f"gov_{role}_{secrets.token_urlsafe(18)}" for role in cv.ROLES}
        router = sup.spawn(
            "router", ["sim", "router", "--pool", args.pool, "--model", MODEL], listen=True
        )
        pool = LocalPool(
            name=args.pool, router_url=router.url, cold_start_s=args.cold_start_s,
            otlp_traces_endpoint=f"{api}/v1/traces",
        )  # fmt: skip
        fleet = LocalFleet([pool], sup, http=http)
        for _ in range(args.replicas):
            fleet.start(args.pool)
        cfg = demo_config(
            pool=args.pool, store_dir=store_dir, port=port, scrape_s=args.scrape_interval_s,
            replica_urls={r.id: r.url for r in fleet.replicas(args.pool)},
        )  # fmt: skip
        cfg_path = data_dir / "governor.yaml"
        cfg_path.write_text(
            "# Generated by governor demo; rewritten at every start.\n"
            + yaml.safe_dump(cfg, sort_keys=False)
        )
        parse_config(cfg, str(cfg_path))  # fail here, naming the field, not in the child
        env = {cv.ENV_API_TOKENS: ",".join(f"{r}:{t}" for r, t in tokens.items())}
        serve = sup.spawn(
            "serve", ["serve", "--config", str(cfg_path), "--data-dir", str(store_dir)], env=env
        )

        def serve_up() -> bool:
            if not serve.alive():
                raise DemoError(f"governor serve exited; see {log_dir / 'serve.log'}")
            try:
                return bool(http.get(f"{api}/healthz").status_code == 200)
            except httpx.HTTPError:
                return False

        _wait("governor serve", serve_up, stop, STARTUP_TIMEOUT_S)

        def fleet_up() -> bool:
            assert fleet is not None
            states = [r.state for r in fleet.replicas(args.pool)]
            if ReplicaState.FAILED in states:
                raise DemoError(f"a replica failed to start; see {log_dir}")
            return states.count(ReplicaState.SERVING) >= int(args.replicas)

        _wait("the simulated replicas", fleet_up, stop, STARTUP_TIMEOUT_S)
        if not args.no_traffic:
            sup.spawn(
                "loadgen",
                ["sim", "loadgen", "--url", router.url, "--profile", args.profile,
                 "--rate-multiplier", str(args.rate_multiplier), "--mix",
                 "chat:3:0,batch:1:1", "--stream-share", "0.3", "--progress", "off"],
            )  # fmt: skip
        _banner(args, api, router.url, fleet.urls(args.pool), tokens, data_dir, started)
        _run_until_stopped(args, fleet, sup, stop, time.monotonic())
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping the demo ...", flush=True)
        n = len([c for c in sup.children() if c.alive()])
        # Traffic first, serve last, so the replicas' final spans still reach it.
        sup.stop_all(grace_s=5.0, names=["loadgen"])
        sup.stop_all(grace_s=5.0, names=[c.name for c in sup.children() if c.name != "serve"])
        sup.stop_all(grace_s=10.0)
        http.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        print(f"stopped {n} processes", flush=True)
    return 0


def _banner(
    args: argparse.Namespace,
    api: str,
    router_url: str,
    replicas: Mapping[str, str],
    tokens: dict[str, str],
    data_dir: Path,
    started: float,
) -> None:
    lines = [
        "",
        f"Governor demo is serving ({time.monotonic() - started:.0f} s to start)",
        f"  API:      {api}",
        f"  router:   {router_url}   (OpenAI API: {router_url}/v1/completions)",
    ]
    for rid, url in sorted(replicas.items()):
        lines.append(f"  replica:  {rid}  {url}   (metrics {url}/metrics, GPU {url}/dcgm/metrics)")
    lines += [
        f"  viewer token:   {tokens['viewer']}",
        f"  operator token: {tokens['operator']}",
        f"  admin token:    {tokens['admin']}",
        f"  try: curl -H 'Authorization: Bearer {tokens['viewer']}' {api}/api/v1/requests",
        f"  config and logs: {data_dir}",
        "Press Ctrl-C to stop every process the demo started.",
    ]
    print("\n".join(lines), flush=True)


def _run_until_stopped(
    args: argparse.Namespace, fleet: Any, sup: Any, stop: threading.Event, started: float
) -> None:
    from controlplane.sim.supervisor import Supervisor

    assert isinstance(sup, Supervisor)
    end = None if args.duration is None else started + args.duration
    known: dict[str, str] = {}
    while not stop.is_set():
        if end is not None and time.monotonic() >= end:
            return
        for name in ("serve", "router"):
            child = sup.get(name)
            if child is not None and not child.alive():
                print(f"{name} exited unexpectedly; see {child.log_path}", file=sys.stderr)
                return
        now_states = {r.id: r.state.value for r in fleet.replicas(args.pool)}
        for rid, state in sorted(now_states.items()):
            if known.get(rid, state) != state:  # e.g. a crash fault, a drain
                print(f"replica {rid}: {known[rid]} -> {state}", flush=True)
        known.update(now_states)
        wait = 2.0 if end is None else max(0.0, min(2.0, end - time.monotonic()))
        stop.wait(wait)
