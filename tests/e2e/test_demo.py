"""``governor demo`` end to end: real processes, real store, real traffic."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
MARKER = "GOVERNOR_TEST_DEMO_MARKER"


class Demo:
    """A ``governor demo`` subprocess whose output is read line by line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.marker = uuid.uuid4().hex
        env = {**os.environ, MARKER: self.marker}
        env.pop("GOVERNOR_API_TOKENS", None)
        cmd = [sys.executable, "-m", "controlplane.cli", "demo", "--data-dir",
               str(tmp_path / "demo"), *args]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
                if time.monotonic() < deadline:
                    continue
            if line is None:
                raise AssertionError(f"demo never printed {text!r}:\n{''.join(self.output)}")
            self.output.append(line)
            if text in line:
                return "".join(self.output)

    def finish(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout_s)
        while (line := self.lines.get(timeout=10)) is not None:
            self.output.append(line)
        return code

    def survivors(self) -> list[str]:
        """Processes still carrying this demo's marker in their environment."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
            if f"{MARKER}={self.marker}".encode() in env and not zombie:
                found.append(f"{entry.name}: {cmd}")
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def wait_for_no_survivors(demo: Demo, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := demo.survivors()) and time.monotonic() < deadline:
        threading.Event().wait(0.2)
    return left


@pytest.mark.slow
def test_demo_serves_traffic_into_the_store_and_leaves_no_process(tmp_path):
    demo = Demo(tmp_path, "--duration", "30", "--replicas", "2", "--cold-start-s", "2",
                "--scrape-interval-s", "2")  # fmt: skip
    try:
        banner = demo.until("Press Ctrl-C", 170)
        api = re.search(r"API:\s+(http://\S+)", banner).group(1)
        token = re.search(r"viewer token:\s+(\S+)", banner).group(1)
        router = re.search(r"router:\s+(http://\S+)", banner).group(1)
        replicas = re.findall(r"replica:\s+(chat-8b-\d+)\s+(http://\S+)", banner)
        assert [name for name, _ in replicas] == ["chat-8b-0", "chat-8b-1"]
        assert token.startswith("gov_viewer_")
        assert httpx.get(router + "/health").status_code == 200

        headers = {"Authorization": f"Bearer {token}"}
        rows: list[dict] = []
        deadline = time.monotonic() + 35
        while not rows and time.monotonic() < deadline:
            resp = httpx.get(api + "/api/v1/requests", headers=headers, timeout=10)
            assert resp.status_code == 200
            rows = resp.json()["requests"]
            if not rows:
                threading.Event().wait(1.0)
        assert rows, "no request reached /api/v1/requests"
        assert {r["pool"] for r in rows} == {"chat-8b"}
        assert {r["replica"] for r in rows} <= {"chat-8b-0", "chat-8b-1"}
        assert {r["tenant"] for r in rows} <= {"chat", "batch"}
        assert all(r["ttft_ms"] is not None and r["output_tokens"] > 0 for r in rows)
        assert httpx.get(api + "/api/v1/requests").status_code == 401  # tokens are enforced

        assert demo.finish(120) == 0, "".join(demo.output)  # --duration: stops by itself
    finally:
        demo.kill()
    assert "stopped" in demo.output[-1]
    assert wait_for_no_survivors(demo, 10) == []


@pytest.mark.slow
def test_sigterm_stops_every_process_the_demo_started(tmp_path):
    demo = Demo(tmp_path, "--replicas", "1", "--no-traffic", "--cold-start-s", "0")
    try:
        demo.until("Press Ctrl-C", 170)
        running = demo.survivors()
        assert len(running) >= 4, running  # demo, serve, router, one replica
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.finish(60) == 0, "".join(demo.output)
    finally:
        demo.kill()
    assert wait_for_no_survivors(demo, 10) == []
