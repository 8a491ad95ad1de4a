"""Alert engine cost: one evaluation's ``process`` at fleet sizes, and delivery fan-out.

    .venv/bin/python -m bench.alerts [--sizes 100,1000,10000] [--groups 200]

- ``process`` with N alert instances: the first evaluation (every alert new: state rows
  and events written) and a steady evaluation (nothing changed: no writes), best of 3,
  wall and CPU time, on the embedded store in a temporary directory.
- ``tick`` flushing G groups to a loopback HTTP receiver: G webhook deliveries sent in
  parallel (8 workers) versus one at a time (the side-by-side ratio).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from alerts import engine as engine_mod
from alerts.engine import AlertEngine
from alerts.signals import AlertSignal
from controlplane.clock import ManualClock
from controlplane.config import AlertingConfig
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import migrate


class _Ok(BaseHTTPRequestHandler):
    posts = 0  # notifications received (the figure's numerator must have arrived)
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", "0")))
        time.sleep(0.005)  # a receiver that takes 5 ms, like a nearby webhook service
        with _Ok.lock:
            _Ok.posts += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _signals(n: int) -> list[AlertSignal]:
    return [
        AlertSignal(
            labels={"alertname": "SLOBurnRateHigh", "slo": f"slo-{i % 100}", "pool": f"p{i}",
                    "severity": "page", "tier": "page-fast"},
            annotations={"summary": f"burn on p{i}"}, active=True, value=20.0,
        )
        for i in range(n)
    ]  # fmt: skip


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bench_process(store: ChdbStore, sizes: list[int]) -> None:
    print("process(): N alert instances per evaluation (best of 3)")
    print(f"{'N':>7} {'first wall s':>13} {'first cpu s':>12} {'steady wall ms':>15} "
          f"{'steady cpu ms':>14}")  # fmt: skip
    cfg = AlertingConfig.model_validate(
        {
            "receivers": [{"name": "h", "kind": "webhook", "url": "http://127.0.0.1:9/x"}],
            "routes": [{"receiver": "h"}],
        }  # fmt: skip
    )
    for n in sizes:
        sigs = _signals(n)
        firsts, steadies = [], []
        for _ in range(3):
            for t in ("alert_state", "alert_events", "alert_nflog", "alert_deliveries"):
                store.command(f"TRUNCATE TABLE {t}")
            clock = ManualClock(time.time())
            http = httpx.Client()
            eng = AlertEngine(store=store, config=cfg, clock=clock, http=http)
            firsts.append(_timed(lambda: eng.process(sigs, clock.now())))  # noqa: B023
            clock.advance(10)
            steadies.append(_timed(lambda: eng.process(sigs, clock.now())))  # noqa: B023
            assert eng.health()["rejected_signals"] == 0
            assert eng.flush_writes(), "alert state not all written"
            (stored,) = store.query("SELECT count() FROM alert_state FINAL").rows[0]
            assert stored == n, f"{stored} alert states stored of {n}"
            http.close()
        fw, fc = min(firsts)
        sw, sc = min(steadies)
        print(f"{n:>7} {fw:>13.3f} {fc:>12.3f} {sw * 1e3:>15.1f} {sc * 1e3:>14.1f}")


def bench_fanout(store: ChdbStore, groups: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    cfg = AlertingConfig.model_validate(
        {
            "receivers": [{"name": "h", "kind": "webhook", "url": url}],
            "routes": [{"receiver": "h", "group_by": ["pool"], "group_wait_s": 0}],
        }  # fmt: skip
    )
    print(f"\ntick(): {groups} groups flushed and delivered to a loopback receiver (5 ms each)")
    results = {}
    for workers in (1, engine_mod.SEND_WORKERS):
        engine_mod.SEND_WORKERS = workers
        for t in ("alert_state", "alert_events", "alert_nflog", "alert_deliveries"):
            store.command(f"TRUNCATE TABLE {t}")
        clock = ManualClock(time.time())
        http = httpx.Client(limits=httpx.Limits(max_connections=16))
        eng = AlertEngine(store=store, config=cfg, clock=clock, http=http,
                          rng=random.Random(1))  # fmt: skip
        eng.process(_signals(groups), clock.now())
        _Ok.posts = 0
        wall, cpu = _timed(lambda: eng.tick(clock.now()))  # noqa: B023
        health = eng.health()
        assert health["open_deliveries"] == 0 and health["dead_letters"] == 0, health
        assert _Ok.posts == groups, f"{_Ok.posts} notifications arrived of {groups}"
        results[workers] = wall
        print(f"  {workers} sender(s): {wall:.3f} s wall, {cpu:.3f} s CPU, "
              f"{groups / wall:.0f} notifications/s")  # fmt: skip
        http.close()
    engine_mod.SEND_WORKERS = max(results)
    print(f"  parallel / serial speed-up: {results[1] / results[max(results)]:.1f}x")
    server.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--groups", type=int, default=200)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        store = ChdbStore(d, database="bench_alerts")
        migrate(store)
        try:
            bench_process(store, [int(x) for x in args.sizes.split(",")])
            bench_fanout(store, args.groups)
        finally:
            store.close()


if __name__ == "__main__":
    main()
