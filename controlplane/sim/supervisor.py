"""Running the simulated fleet's servers: in a thread (tests) or as child processes.

``ThreadServer`` serves an ASGI app with uvicorn on a loopback socket bound here (port 0
unless told), so its URL is known before it starts. ``Supervisor`` starts ``governor ...``
child processes; for servers it binds the listening socket itself and hands the child
its file descriptor (``--fd``), so ports never race and connections made before the child
is up wait in the backlog instead of being refused. Children write to their own log
file, and ``stop_all`` ends every one of them (SIGTERM, then SIGKILL after a grace
period). With ``die_with_parent`` a child also gets SIGTERM from the kernel if the
supervising process dies without cleaning up (Linux ``PR_SET_PDEATHSIG``), and runs in a
session of its own, so a terminal's Ctrl-C reaches only the supervisor, which stops the
children in the order it chooses.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import uvicorn

from controlplane.sim.errors import SimError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
ENV_PDEATHSIG = "GOVERNOR_SIM_PDEATHSIG"
_PR_SET_PDEATHSIG = 1


class ProcessError(SimError):
    """A child process could not be started or did not come up."""


def bind_socket(host: str = LOOPBACK, port: int = 0) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it a response written in two parts (headers,
    # body) waits for the client's delayed ACK, 40 ms per request on Linux loopback.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ProcessError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    return sock


def free_port(host: str = LOOPBACK) -> int:
    """A port free right now, for children that only take ``--port`` (a small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._started_event.set()


def serve_socket(app: Any, sock: socket.socket, *, graceful_s: int = 2) -> None:
    """Serve ``app`` on an already bound socket until SIGINT/SIGTERM (main thread)."""
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=graceful_s, lifespan="on"
    )
    # uvicorn re-raises the signal it shut down on; with the default SIGTERM action that
    # kills the process before the caller's cleanup (span export flush) can run.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    uvicorn.Server(config).run(sockets=[sock])


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


class ThreadServer:
    """Serve an ASGI app from a background thread; ``url`` is known once constructed."""

    def __init__(self, app: Any, *, host: str = LOOPBACK, port: int = 0) -> None:
        self.sock = bind_socket(host, port)
        self.url = url_of(self.sock)
        self._started = threading.Event()
        config = uvicorn.Config(
            app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on"
        )
        self._server = _Server(config, self._started)
        self._thread = threading.Thread(target=self._run, name=f"server-{self.url}", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self.sock]))

    def start(self, timeout_s: float = 10.0) -> ThreadServer:
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise ProcessError(f"server at {self.url} did not start within {timeout_s} s")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    url: str = ""
    log_path: Path | None = None
    started_at: float = field(default_factory=time.monotonic)
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


class Supervisor:
    """Starts and stops ``governor`` child processes; thread-safe."""

    def __init__(self, *, log_dir: Path | None = None, die_with_parent: bool = False) -> None:
        self.log_dir = log_dir
        self.die_with_parent = die_with_parent
        self._lock = threading.Lock()
        self._children: dict[str, Child] = {}

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        listen: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Run ``governor <argv>``; with ``listen``, on a socket bound here (``--fd N``)."""
        with self._lock:
            if name in self._children and self._children[name].alive():
                raise ProcessError(f"a process named {name!r} is already running")
        sock = bind_socket() if listen else None
        args = list(argv)
        fds: tuple[int, ...] = ()
        if sock is not None:
            args += ["--fd", str(sock.fileno())]
            fds = (sock.fileno(),)
        child_env = {**os.environ, **(env or {})}
        if self.die_with_parent:
            child_env[ENV_PDEATHSIG] = str(os.getpid())
        out: IO[bytes] | None = None
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            out = open(log_path, "ab")  # noqa: SIM115 - closed in _reap
        cmd = [
            sys.executable,
            "-c",
            "from controlplane.sim.supervisor import child_main; child_main()",
        ]
        try:
            proc = subprocess.Popen(
                cmd + args,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                pass_fds=fds,
                env=child_env,
                close_fds=True,
                # A terminal's Ctrl-C goes to the whole foreground group; children tied to
                # this process get their own session so it alone decides the stop order.
                start_new_session=self.die_with_parent,
            )
        except OSError as exc:
            if out is not None:
                out.close()
            raise ProcessError(f"cannot start {name}: {exc}") from exc
        finally:
            if sock is not None:
                url = url_of(sock)
                sock.close()  # the child holds its own copy
        child = Child(name, proc, url if sock is not None else "", log_path, _log=out)
        with self._lock:
            self._children[name] = child
        log.info("started %s (pid %s) %s", name, proc.pid, child.url)
        return child

    def get(self, name: str) -> Child | None:
        with self._lock:
            return self._children.get(name)

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    def stop(self, name: str, *, grace_s: float = 5.0, kill: bool = False) -> int | None:
        """Stop one child (SIGTERM, or SIGKILL at once with ``kill``); its exit code."""
        with self._lock:
            child = self._children.pop(name, None)
        if child is None:
            return None
        return self._reap(child, grace_s, kill)

    def stop_all(self, *, grace_s: float = 5.0, names: Sequence[str] | None = None) -> None:
        """Stop every child (or those named), in parallel: one grace period in all."""
        with self._lock:
            picked = [n for n in self._children if names is None or n in names]
            children = [self._children.pop(n) for n in picked]
        for child in children:  # signal everyone first, then wait: one grace period in all
            if child.alive():
                _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(children):
            self._reap(child, max(0.0, deadline - time.monotonic()), False)

    def _reap(self, child: Child, grace_s: float, kill: bool) -> int | None:
        if child.alive():
            _signal(child, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            code = child.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (pid %s) ignored SIGTERM for %.1f s; killing", child.name, child.pid, grace_s
            )
            _signal(child, signal.SIGKILL)
            code = child.process.wait()
        if child._log is not None:
            child._log.close()
        return code


def _signal(child: Child, sig: signal.Signals) -> None:
    try:
        child.process.send_signal(sig)
    except ProcessLookupError:
        pass


def child_main() -> None:
    """Entry point of supervised children: optional parent-death signal, then the CLI."""
    parent = os.environ.pop(ENV_PDEATHSIG, "")
    if parent.isdigit() and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != int(parent):  # the parent died before prctl took effect
            sys.exit(1)
    from controlplane.cli import main

    sys.exit(main(sys.argv[1:]))
