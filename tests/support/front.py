"""Start and stop the chDB HTTP front (``tests/support/chdb_http.py``) as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]


class FrontProcess:
    """The front in its own process, with its own chDB data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        user: str = "default",
        password: str = "",
        start_timeout_s: float = 60,
    ) -> None:
        self.data_dir = data_dir
        self.user = user
        self.password = password
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._log = data_dir / "front.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FrontProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "tests.support.chdb_http", "--data-dir", str(self.data_dir),
            "--port", "0", "--user", self.user, "--password", self.password,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = self._log.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
        log.close()
        ready = threading.Event()
        line: list[str] = []

        def _read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            line.append(self.proc.stdout.readline())
            ready.set()

        threading.Thread(target=_read, daemon=True).start()
        if not ready.wait(self.start_timeout_s) or not line[0].startswith("LISTENING"):
            self.stop()
            raise RuntimeError(f"chDB HTTP front did not start: {self._log.read_text()[-2000:]}")
        _, self.host, port = line[0].split()
        self.port = int(port)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> FrontProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
