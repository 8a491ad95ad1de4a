"""What the simulated fleet's router costs, measured side by side with going direct.

Method: one simulated replica (cold start 0) and the router, each served by uvicorn from
a thread on loopback in this process; clients are httpx in this process. For each case
the same requests are sent straight to the replica and through the router, alternating
batches so machine noise hits both alike:

* latency: sequential 1-token completions (one engine step), p50/p90 of client e2e;
* throughput: 32 concurrent clients of 1-token completions, requests/s;
* streaming: 8 concurrent streams of 200 tokens, chunks/s delivered to clients.

Run: ``.venv/bin/python -m bench.router [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from controlplane.sim import wire
from controlplane.sim.replica import Replica, ReplicaConfig
from controlplane.sim.replica_app import create_app as replica_app
from controlplane.sim.router import Router, create_app
from controlplane.sim.supervisor import ThreadServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ONE = {"model": MODEL, "prompt": wire.make_prompt(16), "max_tokens": 1, "ignore_eos": True}


def latency(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.post(url + "/v1/completions", json=ONE).raise_for_status()
            out.append(time.perf_counter() - t)
    return out


async def throughput(url: str, clients: int, per_client: int) -> float:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:

        async def worker() -> None:
            for _ in range(per_client):
                (await c.post(url + "/v1/completions", json=ONE)).raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return clients * per_client / (time.perf_counter() - t)


async def streaming(url: str, streams: int, tokens: int) -> float:
    body = {**ONE, "max_tokens": tokens, "stream": True}
    async with httpx.AsyncClient(timeout=120) as c:

        async def one() -> int:
            n = 0
            async with c.stream("POST", url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    n += line.startswith("data: {")
            return n

        t = time.perf_counter()
        chunks = sum(await asyncio.gather(*(one() for _ in range(streams))))
        return chunks / (time.perf_counter() - t)


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = 2 if args.quick else 4
    replica = ThreadServer(replica_app(Replica(ReplicaConfig(cold_start_s=0.0)))).start()
    router = Router(model=MODEL)
    router.balancer.add("r0", replica.url)
    front = ThreadServer(create_app(router)).start()
    targets = {"direct": replica.url, "router": front.url}
    lat: dict[str, list[float]] = {k: [] for k in targets}
    rps: dict[str, list[float]] = {k: [] for k in targets}
    cps: dict[str, list[float]] = {k: [] for k in targets}
    try:
        for url in targets.values():  # warm up connections and code paths
            latency(url, 5)
        for _ in range(rounds):
            for k, url in targets.items():
                lat[k] += latency(url, 50)
                rps[k].append(asyncio.run(throughput(url, 32, 8)))
                cps[k].append(asyncio.run(streaming(url, 8, 200)))
    finally:
        front.stop()
        replica.stop()
    print(f"{'':8} {'p50 ms':>8} {'p90 ms':>8} {'req/s':>8} {'chunks/s':>9}")
    for k in targets:
        print(
            f"{k:8} {pct(lat[k], 0.5):8.2f} {pct(lat[k], 0.9):8.2f} "
            f"{statistics.median(rps[k]):8.1f} {statistics.median(cps[k]):9.0f}"
        )
    d, r = "direct", "router"
    print(
        f"router/direct: p50 latency x{pct(lat[r], 0.5) / pct(lat[d], 0.5):.2f} "
        f"(+{pct(lat[r], 0.5) - pct(lat[d], 0.5):.2f} ms), "
        f"req/s x{statistics.median(rps[r]) / statistics.median(rps[d]):.2f}, "
        f"chunks/s x{statistics.median(cps[r]) / statistics.median(cps[d]):.2f}"
    )


if __name__ == "__main__":
    main()
