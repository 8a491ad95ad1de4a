"""``/api/v1/slos``: status, one SLO, history, on-demand evaluation, roles; the
scheduler job as ``serve`` wires it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from alerts.signals import AlertSignal
from controlplane.api.app import create_app
from controlplane.api.auth import TokenAuth
from controlplane.clock import ManualClock, utc
from controlplane.config import parse_config
from controlplane.server import build_context
from controlplane.slo import scheduler
from controlplane.store.chdb_driver import ChdbStore

VIEWER = "viewer-token-0123456789"
OPERATOR = "operator-token-0123456789"
V = {"Authorization": f"Bearer {VIEWER}"}
OP = {"Authorization": f"Bearer {OPERATOR}"}


class Alerts:
    """Stands in for the alerts service: records signals, reports firing per SLO."""

    def __init__(self) -> None:
        self.seen = threading.Event()
        self.signals: list[AlertSignal] = []

    def process(self, signals: Sequence[AlertSignal], now: float) -> None:
        self.signals = list(signals)
        self.seen.set()

    def firing(self, slo: str | None = None) -> list[dict[str, Any]]:
        return [{"labels": s.labels, "state": "firing"} for s in self.signals
                if s.active and (slo is None or s.labels["slo"] == slo)]  # fmt: skip


def _write_slos(tmp_path: Path) -> Path:
    d = tmp_path / "slos"
    d.mkdir()
    (d / "chat.yaml").write_text(yaml.safe_dump({"slos": [
        {"name": "chat-avail", "selector": {"pool": "chat"}, "sli": {"kind": "availability"},
         "objective": 99, "window": "7d", "alerting": {"min_events": 10}},
        {"name": "chat-ttft", "selector": {"pool": "chat"}, "objective": 95, "window": "7d",
         "sli": {"kind": "latency", "metric": "ttft", "threshold_s": 0.5}},
    ]}))  # fmt: skip
    return d


@pytest.fixture
def now() -> float:
    return (int(time.time()) // 3600 - 1) * 3600 + 20 * 60 + 5.0


def _ctx(store: ChdbStore, tmp_path: Path, clock: ManualClock, interval: float = 3600.0) -> Any:
    cfg = parse_config({"slos": str(_write_slos(tmp_path)), "evaluation_interval_s": interval,
                        "alerting": {"external_url": "https://governor.example.com"}},
                       str(tmp_path / "governor.yaml"))  # fmt: skip
    auth = TokenAuth.parse(f"viewer:{VIEWER},operator:{OPERATOR}")
    ctx = build_context(cfg, store, auth, clock=clock, builders=[scheduler.build])
    ctx.services["alerts"] = Alerts()
    return ctx


@pytest.fixture
def client(store: ChdbStore, tmp_path: Path, now: float) -> Iterator[TestClient]:
    rows = [(utc(now - m * 60), "chat", "error" if (m < 8 and k < 5) else "ok", 200_000)
            for m in range(2, 120) for k in range(10)]  # fmt: skip
    store.insert_rows("requests", ["ts", "pool", "status", "ttft_us"], rows)
    with TestClient(create_app(_ctx(store, tmp_path, ManualClock(now)))) as c:
        yield c


def test_slos_are_listed_before_any_evaluation_as_unknown(client: TestClient) -> None:
    r = client.get("/api/v1/slos", headers=V)
    assert r.status_code == 200
    body = r.json()
    assert [s["name"] for s in body["slos"]] == ["chat-avail", "chat-ttft"]
    assert body["slos"][0]["state"] == "unknown" and body["slos"][0]["burn_rates"] == {}


def test_evaluate_needs_operator_and_then_status_shows_burn_rates(client: TestClient) -> None:
    assert client.post("/api/v1/slos/evaluate", headers=V).status_code == 403
    r = client.post("/api/v1/slos/evaluate", headers=OP)
    assert r.status_code == 200 and r.json()["evaluated"] == 2
    body = {s["name"]: s for s in client.get("/api/v1/slos", headers=V).json()["slos"]}
    avail = body["chat-avail"]
    assert avail["objective"] == 0.99 and avail["window"] == "7d"
    # 6 minutes (2..7) of 50% errors: 5m window all bad minutes -> 0.5 / 0.01
    assert avail["burn_rates"]["1m"] == pytest.approx(50.0)
    assert avail["burn_rates"]["14m"] == pytest.approx(30 / 140 / 0.01)
    assert avail["state"] == "exhausted"
    assert avail["sli"] == pytest.approx(1 - 30 / 1180)
    assert avail["budget_remaining"] == pytest.approx(1 - (30 / 1180) / 0.01)
    assert {a["labels"]["tier"] for a in avail["firing_alerts"]} == {"page-fast", "budget"}
    assert body["chat-ttft"]["state"] == "ok" and body["chat-ttft"]["firing_alerts"] == []


def test_one_slo_and_its_history(client: TestClient, now: float) -> None:
    client.post("/api/v1/slos/evaluate", headers=OP)
    one = client.get("/api/v1/slos/chat-ttft", headers=V).json()
    assert one["name"] == "chat-ttft" and one["sli"] == 1.0 and one["sli_kind"] == "latency"
    assert one["tiers"][0] == {"name": "page-fast", "severity": "page", "long": "14m",
                               "short": "1m", "factor": 14.4}  # fmt: skip
    h = client.get("/api/v1/slos/chat-ttft/history",
                   params={"since": now - 60, "until": now + 60}, headers=V).json()  # fmt: skip
    assert len(h["points"]) == 1 and h["points"][0]["state"] == "ok"
    assert h["points"][0]["burn_rates"]["14m"] == 0.0


BAD_REQUESTS = [
    # (what, path, headers, status, message)
    (
        "an unknown SLO",
        "/api/v1/slos/nope",
        V,
        404,
        "unknown SLO 'nope' (known: chat-avail, chat-ttft)",
    ),
    ("history of an unknown SLO", "/api/v1/slos/nope/history", V, 404, "unknown SLO 'nope'"),
    (
        "an unreadable time",
        "/api/v1/slos/chat-ttft/history?since=yesterday",
        V,
        400,
        "since: expected RFC 3339",
    ),
    (
        "since after until",
        "/api/v1/slos/chat-ttft/history?since=200&until=100",
        V,
        400,
        "must be before until",
    ),
    ("no token", "/api/v1/slos", {}, 401, "missing or unknown bearer token"),
]


def test_bad_requests_get_a_clear_message(client: TestClient) -> None:
    # One client for the whole table: a fresh store per case would dominate the runtime.
    for what, path, headers, status, message in BAD_REQUESTS:
        r = client.get(path, headers=headers)
        assert (r.status_code, message in r.json()["detail"]) == (status, True), what


def test_the_scheduler_evaluates_on_its_own_and_feeds_alerts(
    store: ChdbStore, tmp_path: Path, now: float
) -> None:
    ctx = _ctx(store, tmp_path, ManualClock(now), interval=0.2)
    comp = ctx.components["slo-scheduler"]
    alerts: Alerts = ctx.services["alerts"]
    ctx.start()
    try:
        assert alerts.seen.wait(30), "the evaluation job never ran"
    finally:
        ctx.stop()
    health = comp.health()
    assert health["cycles"] >= 1 and health["slos"] == 2 and not health["running"]
    assert {s.labels["slo"] for s in alerts.signals} == {"chat-avail", "chat-ttft"}
    job_kwargs = scheduler.SloScheduler(ctx.services["slo"], 10.0)
    job_kwargs.start()
    try:
        job = job_kwargs._scheduler.get_job(scheduler.JOB_ID)  # type: ignore[union-attr]
        assert (job.max_instances, job.coalesce, job.trigger.interval.total_seconds()) == (
            1,
            True,
            10.0,
        )
    finally:
        job_kwargs.stop()


def test_serve_refuses_an_invalid_slo_file(store: ChdbStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "sli": {"kind": "availability"},
                                   "objective": 90}))  # fmt: skip
    cfg = parse_config({"slos": "bad.yaml"}, str(tmp_path / "governor.yaml"))
    from controlplane.slo.errors import SpecError

    with pytest.raises(SpecError, match="bad.yaml: alerting.tiers \\(default page-fast\\)"):
        build_context(cfg, store, TokenAuth.parse(f"viewer:{VIEWER}"),
                      builders=[scheduler.build])  # fmt: skip


def test_slo_values_are_exported_on_metrics_after_an_evaluation(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = client.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name.startswith("governor_slo_")}  # fmt: skip

    assert samples() == {}  # nothing before the first evaluation
    client.post("/api/v1/slos/evaluate", headers=OP)
    got = samples()
    avail = (("pool", "chat"), ("slo", "chat-avail"))
    assert got[("governor_slo_burn_rate", (*avail, ("window", "1m")))] == pytest.approx(50.0)
    assert got[("governor_slo_state", (*avail, ("state", "exhausted")))] == 1.0
    assert got[("governor_slo_state", (*avail, ("state", "ok")))] == 0.0
    assert got[("governor_slo_budget_remaining", avail)] == pytest.approx(1 - (30 / 1180) / 0.01)
    ttft = (("pool", "chat"), ("slo", "chat-ttft"))
    assert got[("governor_slo_sli", ttft)] == 1.0
    assert got[("governor_slo_objective", ttft)] == 0.95
    # The first cycle read the windows' whole hours from the rollups and saved them
    # (written after the cycle: counted once written, at the latest by the next cycle).
    read = got[("governor_slo_held_hours_total", (("how", "read"),))]
    assert read > 0 and got[("governor_slo_held_hours_total", (("how", "saved"),))] in (0, read)
    assert got[("governor_slo_held_hours_total", (("how", "restored"),))] == 0
    client.post("/api/v1/slos/evaluate", headers=OP)
    got = samples()
    assert got[("governor_slo_held_hours_total", (("how", "read"),))] == read
    assert got[("governor_slo_held_hours_total", (("how", "saved"),))] == read
