"""Governor's burn rates agree with Prometheus running Sloth-style recording rules.

The same synthetic traffic goes into Governor's store (request rows, through the real
rollups) and, as OpenMetrics counters, into a Prometheus TSDB backfilled with
``promtool tsdb create-blocks-from openmetrics``. Prometheus (Debian ``prometheus``)
serves that TSDB on loopback with a Sloth-style rules file (checked by ``promtool check
rules``); recording rules do not backfill, so each rule's expression, as Prometheus
loaded it, is evaluated at chosen instants through the query API and compared with
Governor's burn rate for the same window at the same instant.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controlplane.clock import ManualClock, utc
from controlplane.slo.evaluate import evaluate_slo
from controlplane.slo.spec import parse_slos
from controlplane.store.chdb_driver import ChdbStore
from tests.conftest import require_binary

pytestmark = [pytest.mark.system, pytest.mark.slow]

WINDOWS = ["5m", "30m", "1h", "6h", "3d"]  # Sloth's google-30d windows
OBJECTIVE = 0.99
MINUTES = 3 * 1440 + 6 * 60 + 180  # enough history for a 3d window at every instant
SLOS = {
    "avail": ("slo_request_errors_total", "slo_requests_total", "error"),
    "ttft": ("slo_ttft_seconds_count", "slo_ttft_seconds_bucket", "le"),
}


def _traffic(m: int) -> tuple[int, int, int]:
    """(requests, errors, slow among the ok ones) in the minute ``m`` minutes ago."""
    n = 3 + (m * 7) % 5
    bad = m % 3 if (m // 37) % 5 == 0 else 0
    slow = (m * 13) % 4 if (m // 53) % 3 == 0 else 0
    return n, bad, min(slow, n - bad)


def _openmetrics(end: int) -> str:
    """Counters sampled every 30 s; the value at t counts requests with ts < floor_min(t)."""
    per_min = [(end - m * 60, *_traffic(m)) for m in range(MINUTES, 0, -1)]
    times = [end - MINUTES * 60 + 30 * i for i in range(2 * MINUTES + 1)]
    cum: dict[str, list[int]] = {"req": [], "err": [], "ok": [], "fast": []}
    totals = dict.fromkeys(cum, 0)
    i = 0
    for t in times:
        # the counters step at minute boundaries: at t, minutes that ended by floor(t)
        while i < len(per_min) and per_min[i][0] + 60 <= t - t % 60:
            _, n, bad, slow = per_min[i]
            totals["req"] += n
            totals["err"] += bad
            totals["ok"] += n - bad
            totals["fast"] += n - bad - slow
            i += 1
        for k in cum:
            cum[k].append(totals[k])

    def series(name: str, values: list[int]) -> list[str]:
        return [f"{name} {v} {t}" for t, v in zip(times, values, strict=True)]

    lines = ["# TYPE slo_requests counter", "# HELP slo_requests Requests."]
    lines += series('slo_requests_total{pool="chat"}', cum["req"])
    lines += ["# TYPE slo_request_errors counter", "# HELP slo_request_errors Failed requests."]
    lines += series('slo_request_errors_total{pool="chat"}', cum["err"])
    lines += ["# TYPE slo_ttft_seconds histogram", "# HELP slo_ttft_seconds TTFT of ok requests."]
    lines += series('slo_ttft_seconds_bucket{pool="chat",le="0.5"}', cum["fast"])
    lines += series('slo_ttft_seconds_bucket{pool="chat",le="+Inf"}', cum["ok"])
    lines += series('slo_ttft_seconds_count{pool="chat"}', cum["ok"])
    lines += series('slo_ttft_seconds_sum{pool="chat"}', [0] * len(times))
    return "\n".join(lines) + "\n# EOF\n"


def _rules() -> dict[str, Any]:
    """Sloth-style SLI error-ratio recording rules, one per window and SLO."""
    exprs = {
        "avail": ('sum(rate(slo_request_errors_total{{pool="chat"}}[{w}]))'
                  ' / sum(rate(slo_requests_total{{pool="chat"}}[{w}]))'),
        "ttft": ('1 - (sum(rate(slo_ttft_seconds_bucket{{pool="chat",le="0.5"}}[{w}]))'
                 ' / sum(rate(slo_ttft_seconds_count{{pool="chat"}}[{w}])))'),
    }  # fmt: skip
    groups = []
    for slo, expr in exprs.items():
        rules = [
            {"record": f"slo:sli_error:ratio_rate{w}", "expr": expr.format(w=w),
             "labels": {"sloth_id": f"chat-{slo}", "sloth_slo": slo, "sloth_window": w}}
            for w in WINDOWS
        ]  # fmt: skip
        groups.append({"name": f"sloth-slo-sli-recordings-chat-{slo}", "rules": rules})
    return {"groups": groups}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    promtool = require_binary("promtool", "prometheus")
    prom = require_binary("prometheus", "prometheus")
    end = (int(time.time()) // 3600 - 1) * 3600 + 30 * 60
    om = tmp_path / "data.om"
    om.write_text(_openmetrics(end))
    tsdb = tmp_path / "tsdb"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(tsdb)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(_rules(), sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0 and "SUCCESS: 10 rules found" in check.stdout, check.stdout
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({"global": {"evaluation_interval": "1h"},
                                   "rule_files": [str(rules)]}))  # fmt: skip
    port = _free_port()
    log = tmp_path / "prometheus.log"
    log_f = log.open("wb")
    proc = subprocess.Popen(
        [prom, f"--config.file={cfg}", f"--storage.tsdb.path={tsdb}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"],
        stdout=subprocess.DEVNULL, stderr=log_f,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # an external process: poll its readiness endpoint
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, end
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log_f.close()


def _store_traffic(store: ChdbStore, end: int) -> None:
    rows = []
    for m in range(MINUTES, 0, -1):
        n, bad, slow = _traffic(m)
        t0 = end - m * 60
        for k in range(n):
            err, is_slow = k < bad, bad <= k < bad + slow
            ttft = None if err else 900_000 if is_slow else 200_000
            rows.append((utc(t0 + k * 60 / n), "chat", "error" if err else "ok", ttft))
    store.insert_rows("requests", ["ts", "pool", "status", "ttft_us"], rows)


def test_burn_rates_agree_with_prometheus_recording_rules(
    store: ChdbStore, prometheus: tuple[str, int]
) -> None:
    url, end = prometheus
    _store_traffic(store, end)
    base = {"selector": {"pool": "chat"}, "objective": OBJECTIVE * 100, "window": "30d",
            "alerting": {"offset": "0s", "min_events": 1}}  # fmt: skip
    slos = {s.name: s for s in parse_slos({"slos": [
        {**base, "name": "avail", "sli": {"kind": "availability"}},
        {**base, "name": "ttft", "sli": {"kind": "latency", "metric": "ttft", "threshold_s": 0.5}},
    ]})}  # fmt: skip
    loaded = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    exprs = {(r["labels"]["sloth_slo"], r["labels"]["sloth_window"]): r["query"]
             for g in loaded for r in g["rules"]}  # fmt: skip
    assert len(exprs) == 10
    # instants on and off the hour, minutes apart and hours apart
    instants = [end, end - 13 * 60, end - 30 * 60, end - 3 * 3600 - 47 * 60, end - 5 * 3600]
    compared = 0
    for at in instants:
        for name, slo in slos.items():
            ev = evaluate_slo(store, slo, ManualClock(at).now())
            for w in WINDOWS:
                q = {"query": exprs[(name, w)], "time": at}
                r = httpx.get(f"{url}/api/v1/query", params=q, timeout=30)
                result = r.json()["data"]["result"]
                prom_burn = float(result[0]["value"][1]) / (1 - OBJECTIVE) if result else 0.0
                gov_burn = ev.burn_rates[w]
                assert gov_burn == pytest.approx(prom_burn, rel=0.01, abs=1e-9), (
                    f"{name} {w} at {utc(at)}: governor {gov_burn} prometheus {prom_burn}"
                )
                compared += gov_burn > 0
    assert compared >= 20  # most comparisons are of non-zero burn rates
