"""The SLO engine inside ``governor serve`` (a subprocess on loopback, real HTTP)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, start_serve, stop_serve

pytestmark = pytest.mark.slow


def test_serve_loads_the_slos_evaluates_on_demand_and_reports_them(tmp_path: Path) -> None:
    cfg = tmp_path / "governor.yaml"
    cfg.write_text(f"slos: {REPO / 'examples' / 'slos'}\nevaluation_interval_s: 3600\n")
    sp = start_serve(tmp_path, config=cfg)
    try:
        r = httpx.post(f"{sp.url}/api/v1/slos/evaluate", headers=sp.headers("operator"),
                       timeout=60)  # fmt: skip
        assert r.status_code == 200 and r.json()["evaluated"] == 8
        slos = httpx.get(f"{sp.url}/api/v1/slos", headers=sp.headers(), timeout=30).json()
        by = {s["name"]: s for s in slos["slos"]}
        assert set(by) >= {"chat-8b-availability", "code-70b-e2e", "code-70b-gpu-health"}
        # nothing has been ingested: an explicit no-data state, not 0% or 100%
        assert {s["state"] for s in by.values()} == {"no_data"}
        no_data = by["chat-8b-availability"]["firing_alerts"]
        assert no_data and all(a["labels"]["alertname"] == "SLONoData" for a in no_data)
        health = httpx.get(f"{sp.url}/healthz", timeout=30).json()
        assert health["components"]["slo-scheduler"]["slos"] == 8
        h = httpx.get(f"{sp.url}/api/v1/slos/chat-8b-ttft/history", headers=sp.headers(),
                      timeout=30).json()  # fmt: skip
        assert [p["state"] for p in h["points"]] == ["no_data"]
    finally:
        stop_serve(sp)
    assert sp.proc.returncode == 0, sp.output()
