"""Shared fixtures.

chDB runs one embedded server per process and data directory, so the whole test run
shares one directory and every test gets a fresh *database* in it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.clock import ManualClock
from controlplane.store.chdb_driver import ChdbStore
from tests.support.stores import migrated_store

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store(chdb_path: Path) -> Iterator[ChdbStore]:
    """A migrated embedded store in a database of its own."""
    with migrated_store(chdb_path) as s:
        yield s


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def require_binary(name: str, package: str) -> str:
    """Path of a system binary, or skip naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install the Debian package {package!r}")
    return path


def trace_file(name: str) -> Path:
    p = TRACES / name
    if not p.exists():
        pytest.skip(f"trace {p} not present (expected in ../shared/traces)")
    return p


os.environ.setdefault("GOVERNOR_TEST", "1")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServeProcess:
    """A ``governor serve`` subprocess on loopback with known tokens; see ``serve_process``."""

    VIEWER = "viewer-test-token-000000"
    OPERATOR = "operator-test-token-0000"
    ADMIN = "admin-test-token-00000000"

    def __init__(self, proc: object, url: str, log: Path) -> None:
        import subprocess

        assert isinstance(proc, subprocess.Popen)
        self.proc = proc
        self.url = url
        self.log = log

    def headers(self, role: str = "viewer") -> dict[str, str]:
        token = {"viewer": self.VIEWER, "operator": self.OPERATOR, "admin": self.ADMIN}[role]
        return {"Authorization": f"Bearer {token}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_serve(
    tmp_path: Path,
    *,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> ServeProcess:
    """Start ``governor serve`` with its own data dir and wait until /healthz answers."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    tokens = (
        f"viewer:{ServeProcess.VIEWER},operator:{ServeProcess.OPERATOR},admin:{ServeProcess.ADMIN}"
    )
    full_env = {**os.environ, "GOVERNOR_API_TOKENS": tokens, **(env or {})}
    cmd = [sys.executable, "-m", "controlplane.cli", "serve", "--port", str(port),
           "--data-dir", str(tmp_path / f"data-{port}")]  # fmt: skip
    if config is not None:
        cmd += ["--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    sp = ServeProcess(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"governor serve exited {proc.returncode}:\n{sp.output()}")
        try:
            if httpx.get(f"{sp.url}/healthz", timeout=2).status_code == 200:
                return sp
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a child process's readiness; no event to wait on
    stop_serve(sp)
    raise RuntimeError(f"governor serve not healthy after {timeout_s}s:\n{sp.output()}")


def stop_serve(sp: ServeProcess) -> None:
    import signal
    import subprocess

    if sp.proc.poll() is None:
        sp.proc.send_signal(signal.SIGINT)
        try:
            sp.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sp.proc.kill()
            sp.proc.wait(timeout=10)


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[ServeProcess]:
    """``governor serve`` with default config (no file); tokens in ``ServeProcess``."""
    sp = start_serve(tmp_path)
    try:
        yield sp
    finally:
        stop_serve(sp)
