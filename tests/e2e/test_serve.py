"""``governor serve`` as a user runs it: a subprocess on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO, ServeProcess, start_serve, stop_serve


def test_serve_answers_health_metrics_and_authenticated_api(serve_process: ServeProcess) -> None:
    sp = serve_process
    health = httpx.get(f"{sp.url}/healthz").json()
    assert health["store"]["ok"] and health["store"]["driver"] == "chdb"
    assert "governor_build_info" in httpx.get(f"{sp.url}/metrics").text
    assert httpx.get(f"{sp.url}/api/v1/requests").status_code == 401
    r = httpx.get(f"{sp.url}/api/v1/requests", headers=sp.headers())
    assert r.status_code == 200 and r.json() == {"requests": [], "count": 0}


def test_serve_with_the_example_config_starts(tmp_path: Path) -> None:
    sp = start_serve(tmp_path, config=REPO / "examples" / "governor.yaml")
    try:
        assert httpx.get(f"{sp.url}/healthz").status_code == 200
    finally:
        stop_serve(sp)
    assert sp.proc.returncode == 0, sp.output()


def _serve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "serve", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_serve_refuses_public_bind_without_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GOVERNOR_API_TOKENS"}
    r = _serve(["--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")], env)
    assert r.returncode == 1
    assert "refusing to listen on 0.0.0.0: GOVERNOR_API_TOKENS is not set" in r.stderr


def test_serve_refuses_a_second_process_on_the_same_data_dir(tmp_path: Path) -> None:
    sp = start_serve(tmp_path)
    try:
        data_dir = sp.proc.args[sp.proc.args.index("--data-dir") + 1]  # type: ignore[union-attr]
        r = _serve(["--port", "1", "--data-dir", data_dir], dict(os.environ))
        assert r.returncode == 1
        assert f"pid {sp.proc.pid}" in r.stderr and "is in use by another process" in r.stderr
    finally:
        stop_serve(sp)


def test_serve_rejects_an_invalid_config_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "g.yaml"
    bad.write_text("server: {port: 0}\n")
    r = _serve(["--config", str(bad)], dict(os.environ))
    assert r.returncode == 2
    assert f"error: {bad}: server.port: Input should be greater than or equal to 1" in r.stderr
