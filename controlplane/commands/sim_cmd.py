"""``governor sim replica|router|loadgen``: the simulated fleet's processes.

``governor demo`` and the local fleet actuator start these; they are also usable by hand,
e.g. to point a real client or Governor at a simulated vLLM replica.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from controlplane.sim.errors import SimError

log = logging.getLogger(__name__)


def _listen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--fd", type=int, default=None, help="serve on this inherited socket fd")


def _quiet_http_client() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request


def register(sub: Any) -> None:
    p = sub.add_parser("sim", help="run parts of the simulated fleet (replica, router, loadgen)")
    ssub = p.add_subparsers(dest="sim_command", metavar="PART")
    ssub.required = True

    r = ssub.add_parser("replica", help="a simulated vLLM replica (OpenAI API, /metrics)")
    r.add_argument("--name", default="replica-0", help="replica id (span/metric labels)")
    r.add_argument("--pool", default="chat-8b", help="pool the replica belongs to")
    r.add_argument("--engine", default="llama31-8b-h100-vllm", help="engine configuration")
    r.add_argument("--served-model-name", default="", help="model name clients use")
    r.add_argument("--cold-start-s", type=float, default=5.0, help="seconds until /health is 200")
    r.add_argument("--otlp-traces-endpoint", default=None, help="OTLP/HTTP traces URL")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--gpu-index", type=int, default=0)
    _listen_args(r)
    r.set_defaults(func=_replica)

    rt = ssub.add_parser("router", help="OpenAI-compatible router over replicas")
    rt.add_argument("--pool", default="chat-8b")
    rt.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    rt.add_argument(
        "--replica", action="append", default=[], metavar="NAME=URL", help="a backend (repeat)"
    )
    rt.add_argument("--limits", default=None, help="JSON or YAML file: a list of limits")
    rt.add_argument("--otlp-traces-endpoint", default=None, help="export router spans here")
    _listen_args(rt)
    rt.set_defaults(func=_router)

    lg = ssub.add_parser("loadgen", help="open-loop traffic to a router or replica")
    lg.add_argument("--url", required=True, help="base URL (router or replica)")
    src = lg.add_mutually_exclusive_group()
    src.add_argument("--trace", help="Azure LLM trace CSV file (by path)")
    src.add_argument("--profile", choices=("conv", "code"), help="fitted Azure profile")
    src.add_argument("--pattern", help="constant:RPS | steps:T=RPS,... | diurnal:... | ...")
    lg.add_argument("--tokens", default=None, metavar="IN:OUT", help="fixed tokens (pattern)")
    lg.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    lg.add_argument("--time-compression", type=float, default=1.0)
    lg.add_argument("--rate-multiplier", type=float, default=1.0)
    lg.add_argument("--mix", default=None, help="tenant:weight[:priority],...")
    lg.add_argument("--concurrency", type=int, default=256, help="max requests in flight")
    lg.add_argument("--stream-share", type=float, default=0.5, help="share of streamed requests")
    lg.add_argument("--model", default="", help="model field of requests")
    lg.add_argument("--loop", action="store_true", help="start the trace over when it ends")
    lg.add_argument("--seed", type=int, default=0)
    lg.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
    lg.add_argument("--json", action="store_true", help="print final counts as JSON")
    lg.set_defaults(func=_loadgen)


def _socket(args: argparse.Namespace) -> socket.socket:
    from controlplane.sim.supervisor import bind_socket

    if args.fd is not None:
        return socket.socket(fileno=args.fd)
    return bind_socket(args.host, args.port)


def _announce(what: str, sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    print(f"{what} listening on http://{host}:{port}", flush=True)


def _tracer_provider(endpoint: str, attrs: dict[str, str]) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from controlplane.sim.span_export import BufferingExporter

    provider = TracerProvider(resource=Resource.create(attrs))
    # Spans finished while Governor is down wait in the exporter and go out when it is
    # back; the processor's queue is deep enough to ride out the exporter's retries.
    exporter = BufferingExporter(OTLPSpanExporter(endpoint=endpoint, timeout=5))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=32768))
    return provider


def _replica(args: argparse.Namespace) -> int:
    from controlplane.sim.calibration import get_params
    from controlplane.sim.gpu_model import GpuModel
    from controlplane.sim.replica import Replica, ReplicaConfig
    from controlplane.sim.replica_app import create_app
    from controlplane.sim.replica_metrics import DcgmGpu
    from controlplane.sim.supervisor import serve_socket

    params = get_params(args.engine)
    config = ReplicaConfig(
        name=args.name,
        pool=args.pool,
        params=params,
        served_model=args.served_model_name,
        cold_start_s=args.cold_start_s,
        seed=args.seed,
        gpu_index=args.gpu_index,
        hostname=socket.gethostname(),
    )
    provider = None
    tracer = None
    if args.otlp_traces_endpoint:
        provider = _tracer_provider(
            args.otlp_traces_endpoint,
            {
                "service.name": "vllm",
                "service.instance.id": args.name,
                "governor.pool": args.pool,
                "governor.replica": args.name,
            },
        )
        tracer = provider.get_tracer("vllm.llm_engine")

    def crash() -> None:
        os._exit(70)  # a crash: no cleanup, connections reset

    replica = Replica(config, tracer=tracer, gpu=DcgmGpu(GpuModel(params)), on_crash=crash)
    sock = _socket(args)
    _announce(f"replica {args.name}", sock)
    try:
        serve_socket(create_app(replica), sock)
    finally:
        if provider is not None:
            provider.shutdown()
    return 0


def _router(args: argparse.Namespace) -> int:
    from controlplane.sim.admission import parse_limits

    _quiet_http_client()
    from controlplane.sim.router import Router, create_app
    from controlplane.sim.supervisor import serve_socket

    provider = None
    tracer = None
    if args.otlp_traces_endpoint:
        provider = _tracer_provider(
            args.otlp_traces_endpoint,
            {"service.name": "governor-router", "governor.pool": args.pool},
        )
        tracer = provider.get_tracer("governor.sim.router")
    router = Router(model=args.model, pool=args.pool, tracer=tracer)
    for item in args.replica:
        name, sep, url = item.partition("=")
        if not sep or not url.startswith("http"):
            raise SimError(f"--replica {item!r}: expected NAME=http://host:port")
        router.balancer.add(name, url)
    if args.limits:
        router.admission.set_limits(parse_limits(_load_list(Path(args.limits)), args.limits))
    sock = _socket(args)
    _announce("router", sock)
    try:
        serve_socket(create_app(router), sock)
    finally:
        if provider is not None:
            provider.shutdown()
    return 0


def _load_list(path: Path) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as exc:
        raise SimError(f"cannot read limits file {path}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("limits")
    if not isinstance(data, list):
        raise SimError(f"{path}: expected a list of limits (or {{limits: [...]}})")
    return data


def _loadgen(args: argparse.Namespace) -> int:
    from controlplane.sim.loadgen import LoadGenerator, Progress, Source

    _quiet_http_client()

    tokens = None
    if args.tokens:
        a, sep, b = args.tokens.partition(":")
        if not sep or not a.isdigit() or not b.isdigit():
            raise SimError(f"--tokens {args.tokens!r}: expected IN:OUT, e.g. 512:128")
        tokens = (int(a), int(b))
    source = Source(
        trace=args.trace,
        profile=args.profile if not (args.trace or args.pattern) else None,
        pattern=args.pattern,
        tokens=tokens,
        rate_multiplier=args.rate_multiplier,
        time_compression=args.time_compression,
        mix=args.mix,
        seed=args.seed,
        loop=args.loop,
    )
    if not (args.trace or args.pattern or args.profile):
        source = Source(**{**source.__dict__, "profile": "conv"})
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    gen = LoadGenerator(
        args.url,
        source.arrivals(args.duration),
        model=args.model,
        concurrency=args.concurrency,
        stream_share=args.stream_share,
        seed=args.seed,
        duration_s=args.duration,
        progress=Progress(total_s=args.duration) if show else None,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await gen.run(stop)

    asyncio.run(main())
    stats = gen.stats.to_dict()
    if args.json:
        print(json.dumps(stats))
    else:
        print(
            f"sent {stats['sent']} ok {stats['ok']} errors {stats['errors']} "
            f"rejected {stats['rejected']} dropped {stats['dropped']}"
        )
    return 0
