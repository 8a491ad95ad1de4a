"""Scrape path costs: parse+adapt per exposition, a round over many loopback targets, and
the agent's /metrics render. Run: ``.venv/bin/python -m bench.scrape``.

1. Parse+adapt vs parse-only, per fixture (the same prometheus-client parser both times),
   so the ratio is what the adapters add on top of the parser.
2. One scrape round over N real loopback HTTP targets (ThreadingHTTPServer serving the
   vLLM fixture) with the configured concurrency, with and without one target that hangs
   past the timeout: the time until every healthy target's rows were emitted.
3. The agent: rendering /metrics for 8 simulated GPUs (prometheus-client exposition).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import generate_latest

from collector.gpu_metrics import AgentServer
from collector.gpu_sim import SimulatedGpus
from collector.scrape import Scraper
from collector.scrape_adapters import adapter_for
from collector.scrape_parse import parse
from collector.scrape_rates import CounterRates
from collector.scrape_targets import Target
from tests.fakes.metrics_server import fixture, metrics_server

FIXTURES = [
    ("vllm", "vllm.txt"),
    ("sglang", "sglang.txt"),
    ("tgi", "tgi.txt"),
    ("dcgm", "dcgm.txt"),
]


def median_of(fn: Callable[[], Any], n: int, repeat: int = 5) -> float:
    """Median seconds per call over ``repeat`` runs of ``n`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def bench_parse(n: int) -> None:
    print("## parse + adapt per exposition (median of 5 runs)")
    print(
        f"{'kind':8} {'series':>7} {'parse ms':>9} {'parse+adapt ms':>15} {'ratio':>6} "
        f"{'series/s':>10}"
    )
    for kind, name in FIXTURES:
        text = fixture(name)
        target = Target("http://10.0.0.1:8000/metrics", kind, "p", "r")
        rates = CounterRates()
        clock = [1_763_500_000.0]
        series = len(parse(text))

        def parse_only(text: str = text) -> None:
            parse(text)

        def parse_adapt(
            text: str = text,
            target: Target = target,
            rates: CounterRates = rates,
            kind: str = kind,
            clock: list[float] = clock,
        ) -> None:
            clock[0] += 15
            adapter_for(kind).records(parse(text), target, clock[0], rates)

        p = median_of(parse_only, n)
        pa = median_of(parse_adapt, n)
        print(
            f"{kind:8} {series:7d} {p * 1e3:9.3f} {pa * 1e3:15.3f} {pa / p:6.2f} "
            f"{series / pa:10.0f}"
        )


class _CountingSink:
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.rows = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self.t_done: float | None = None

    def emit(self, records: Sequence[Any]) -> None:
        with self._lock:
            self.rows += sum(1 for r in records if getattr(r, "up", True))
            if self.rows >= self.expect and not self.done.is_set():
                self.t_done = time.perf_counter()
                self.done.set()


def bench_round(targets: int, concurrency: int, timeout_s: float) -> None:
    print(f"\n## one round over {targets} loopback vLLM targets, concurrency {concurrency}")
    print(f"{'case':34} {'all healthy rows at':>20} {'round ends':>11}")
    text = fixture("vllm.txt")
    with metrics_server() as srv:
        urls = [srv.serve(f"/t{i}", text) for i in range(targets)]
        hang = threading.Event()
        slow = srv.serve("/slow", text, hang=hang)
        for label, extra in (
            ("all healthy", []),
            (f"plus one hanging ({timeout_s:g}s timeout)", [slow]),
        ):
            ts = [Target(u, "vllm", "p", f"r{i}") for i, u in enumerate(urls + extra)]
            sink = _CountingSink(targets)
            s = Scraper(sink, targets=ts, timeout_s=timeout_s, concurrency=concurrency)
            t0 = time.perf_counter()
            s.scrape_once()
            t_end = time.perf_counter() - t0
            t_rows = (sink.t_done or time.perf_counter()) - t0
            print(f"{label:34} {t_rows * 1e3:17.1f} ms {t_end * 1e3:8.1f} ms")
        hang.set()


def bench_agent(gpus: int, n: int) -> None:
    server = AgentServer(SimulatedGpus(gpus), node="bench", interval_s=3600, port=0)
    server.source.open()
    server.poller.poll()
    t = median_of(lambda: generate_latest(server.registry), n)
    size = len(generate_latest(server.registry))
    print(f"\n## agent /metrics render, {gpus} simulated GPUs: {t * 1e3:.3f} ms, {size} bytes")
    server.source.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="calls per timing run")
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"
    )
    bench_parse(args.n)
    bench_round(args.targets, args.concurrency, args.timeout)
    bench_agent(8, args.n)


if __name__ == "__main__":
    main()
