"""``governor serve`` scraping loopback engines and a GPU exporter into the store.

One target hangs past the timeout and one has nothing listening: both are reported down
through ``GET /api/v1/targets`` while the healthy ones keep being scraped on schedule, and
their rows reach ``replica_samples``/``gpu_samples`` through the writer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from collector.gpu_metrics import AgentServer
from collector.gpu_sim import SimulatedGpus
from tests.conftest import ServeProcess, start_serve, stop_serve
from tests.fakes.metrics_server import closed_port, fixture, metrics_server

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0
INTERVAL_S = 0.25

READ_STORE = """
import json, sys
from controlplane.config import StoreConfig
from controlplane.store import open_store
s = open_store(StoreConfig(), data_dir=sys.argv[1])
rep = s.query("SELECT replica, engine, up, count() AS n, max(running) AS running, "
              "max(kv_cache_usage) AS kv FROM replica_samples GROUP BY replica, engine, up "
              "ORDER BY replica, up").dicts()
gpu = s.query("SELECT gpu, source, node, replica, count() AS n, max(power_w) AS power "
              "FROM gpu_samples GROUP BY gpu, source, node, replica ORDER BY gpu").dicts()
print(json.dumps({"replicas": rep, "gpus": gpu}, default=str))
s.close()
"""


def targets(sp: ServeProcess) -> dict[str, dict]:
    r = httpx.get(f"{sp.url}/api/v1/targets", headers=sp.headers("viewer"), timeout=10)
    r.raise_for_status()
    return {t["replica"] or t["url"]: t for t in r.json()["targets"]}


def until(sp: ServeProcess, cond, timeout=60.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        ts = targets(sp)
        if cond(ts):
            return ts
        if time.monotonic() > deadline:
            raise AssertionError(f"targets never satisfied the condition: {ts}\n{sp.output()}")
        time.sleep(0.1)  # another process: no event to wait on


def test_serve_scrapes_into_the_store_and_reports_slow_and_dead_targets_down(tmp_path: Path):
    agent = AgentServer(SimulatedGpus(2), node="sim-node", interval_s=0.2, port=0)
    agent.start()
    try:
        with metrics_server() as srv:
            hang = threading.Event()
            good = srv.serve("/vllm", fixture("vllm.txt"))
            dcgm = srv.serve("/dcgm", fixture("dcgm.txt"))
            slow = srv.serve("/slow", fixture("sglang.txt"), hang=hang)
            srv.serve("/metrics", fixture("tgi.txt"))
            dead = f"http://127.0.0.1:{closed_port()}/metrics"
            sd = tmp_path / "targets.json"
            sd.write_text(
                json.dumps(
                    [
                        {
                            "targets": [f"127.0.0.1:{srv.port}"],
                            "labels": {
                                "kind": "tgi",
                                "pool": "chat",
                                "replica": "r-tgi",
                                "model": "meta-llama/Llama-3.1-8B-Instruct",
                            },
                        }
                    ]
                )
            )
            cfg = tmp_path / "governor.yaml"
            cfg.write_text(f"""
    scrape:
      interval_s: {INTERVAL_S}
      timeout_s: {TIMEOUT_S}
      concurrency: 4
      file_sd: [targets.json]
      targets:
        - {{url: "{good}", kind: vllm, pool: chat, replica: r-good}}
        - {{url: "{slow}", kind: sglang, pool: chat, replica: r-slow}}
        - {{url: "{dead}", kind: vllm, pool: chat, replica: r-dead}}
        - {{url: "{dcgm}", kind: dcgm, pool: chat}}
        - {{url: "{agent.url}", kind: agent, pool: chat}}
    """)
            sp = start_serve(tmp_path, config=cfg)
            try:
                ts = until(sp, lambda ts: ts.get("r-slow", {}).get("health") == "down")
                # While the slow target used up its whole timeout, the others were scraped on
                # their own schedule (every 0.25 s), not once per slow round.
                good_hits = srv.routes["/vllm"].hits
                assert good_hits >= 3, good_hits
                assert ts["r-slow"]["last_error"] == f"timeout after {TIMEOUT_S:g}s"
                ts = until(
                    sp,
                    lambda ts: all(
                        ts.get(k, {}).get("health") in ("up", "down")
                        for k in ("r-good", "r-dead", "r-tgi", dcgm)
                    ),
                )
                assert ts["r-good"]["health"] == "up" and ts["r-good"]["last_error"] == ""
                assert ts["r-good"]["last_success"].endswith("Z")
                assert ts["r-tgi"]["health"] == "up" and ts["r-tgi"]["source"] == str(sd)
                assert ts[dcgm]["health"] == "up" and ts[dcgm]["rows"] == 2
                assert ts["r-dead"]["health"] == "down"
                assert "conn" in ts["r-dead"]["last_error"].lower()
                chat = httpx.get(
                    f"{sp.url}/api/v1/targets", params={"pool": "nope"}, headers=sp.headers()
                ).json()
                assert chat["count"] == 0
                assert httpx.get(f"{sp.url}/api/v1/targets").status_code == 401
                metrics = httpx.get(f"{sp.url}/metrics").text
                assert (
                    'governor_scrape_target_up{kind="vllm",pool="chat",replica="r-good"' in metrics
                )
                health = httpx.get(f"{sp.url}/healthz").json()["components"]["scrape"]
                assert health["running"] and health["down"] >= 2
                # A few more scrapes so rows accumulate (counted at the server, polled).
                want = srv.routes["/vllm"].hits + 3
                deadline = time.monotonic() + 30
                while srv.routes["/vllm"].hits < want and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                hang.set()
                stop_serve(sp)
    finally:
        agent.stop()
    assert sp.proc.returncode == 0, sp.output()
    data_dir = next(tmp_path.glob("data-*"))
    out = subprocess.run(
        [sys.executable, "-c", READ_STORE, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout)
    reps = {(r["replica"], r["up"]): r for r in got["replicas"]}
    assert reps[("r-good", True)]["n"] >= 3
    assert reps[("r-good", True)]["running"] == 25.0
    assert reps[("r-tgi", True)]["engine"] == "tgi"
    assert ("r-dead", False) in reps and ("r-dead", True) not in reps
    assert ("r-slow", False) in reps
    gpus = {g["gpu"]: g for g in got["gpus"] if g["source"] == "dcgm"}
    assert sorted(gpus) == [0, 1]
    sim = [g for g in got["gpus"] if g["source"] == "sim"]
    assert sorted(g["gpu"] for g in sim) == [0, 1]
    assert {g["node"] for g in sim} == {"sim-node"} and all(g["n"] >= 1 for g in sim)
    assert gpus[0]["source"] == "dcgm" and gpus[0]["node"] == "6d6d7dc3ce21"
    assert gpus[0]["replica"] == "llama-8b-6f9c7d5b8-x2kqp"
    assert abs(gpus[0]["power"] - 386.214) < 0.01
