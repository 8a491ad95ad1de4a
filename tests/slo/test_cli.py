"""``governor slo evaluate``: one cycle against a store of its own, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_slo_evaluate_runs_one_cycle_and_prints_every_slo(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "slo", "evaluate",
         "--slos", str(REPO / "examples" / "slos"), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out) == 8 and "chat-8b-ttft" in out
    # an empty store: every SLO says so explicitly instead of reporting 0% or 100%
    assert {v["state"] for v in out.values()} == {"no_data"}
    assert all(v["sli"] is None and v["budget_remaining"] is None for v in out.values())


def test_slo_evaluate_without_slos_names_the_missing_option(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "slo", "evaluate",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--slos: no SLOs" in r.stderr
