"""``governor serve`` with ``GOVERNOR_CLICKHOUSE_URL`` migrates the server's database and
reports the clickhouse driver on ``/healthz`` (both processes real, on loopback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from controlplane import conventions as cv
from controlplane.store.clickhouse_driver import ClickHouseStore
from controlplane.store.migrate import known_migrations
from tests.support.front import REPO, FrontProcess, free_port


def _wait_healthy(url: str, proc: subprocess.Popen[str], deadline_s: float) -> httpx.Response:
    """Poll until the API answers (uvicorn binds after the process prints its banner)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > end:
                raise
            time.sleep(0.2)


@pytest.mark.slow
def test_serve_migrates_the_clickhouse_store_and_reports_it_on_healthz(
    chdb_front: FrontProcess, tmp_path: Path
) -> None:
    database = f"srv_{uuid.uuid4().hex[:10]}"
    config = tmp_path / "governor.yaml"
    config.write_text(f"store:\n  database: {database}\n  query_timeout_s: 20\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVERNOR_")}
    env[cv.ENV_CLICKHOUSE_URL] = chdb_front.url
    governor = Path(sys.executable).with_name("governor")
    proc = subprocess.Popen(
        [str(governor), "serve", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--data-dir", str(tmp_path / "unused")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    banner: list[str] = []
    got_banner = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            banner.append(line)
            got_banner.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert got_banner.wait(120), "governor serve printed nothing"
        r = _wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, 60)
        body = r.json()
        assert r.status_code == 200, body
        newest = known_migrations()[-1].version
        assert body["store"] == {
            "ok": True,
            "driver": "clickhouse",
            "database": database,
            "schema_version": newest,
            "detail": chdb_front.url,
        }
        assert chdb_front.url in "".join(banner)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    check = ClickHouseStore(chdb_front.url, database=database)
    try:
        recorded = check.query("SELECT version FROM schema_migrations ORDER BY version").rows
        assert recorded == [(m.version,) for m in known_migrations()]
    finally:
        check.command(f"DROP DATABASE {database}")
        check.close()
