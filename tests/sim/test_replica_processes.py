"""Replica processes under the supervisor: inherited sockets, stopping, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from controlplane.sim.supervisor import ProcessError, Supervisor


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_replica_process_serves_on_the_socket_bound_by_the_supervisor(tmp_path):
    sup = Supervisor(log_dir=tmp_path)
    try:
        child = sup.spawn("r0", ["sim", "replica", "--name", "r0", "--cold-start-s", "0"],
                          listen=True)  # fmt: skip
        assert child.url.startswith("http://127.0.0.1:")
        # Connecting before the child serves waits in the backlog: no refused connection.
        assert httpx.get(child.url + "/health", timeout=60).status_code == 200
        with pytest.raises(ProcessError, match="already running"):
            sup.spawn("r0", ["sim", "replica"], listen=True)
        code = sup.stop("r0", grace_s=10)
        assert code == 0  # SIGTERM: uvicorn shuts down cleanly
        assert not alive(child.pid)
        assert "replica r0 listening on " + child.url in (tmp_path / "r0.log").read_text()
    finally:
        sup.stop_all()


@pytest.mark.slow
def test_children_die_with_a_supervisor_that_is_killed(tmp_path):
    # A supervising process that starts a replica, prints its pid, then waits forever.
    script = textwrap.dedent(
        f"""
        import sys, threading
        from pathlib import Path
        from controlplane.sim.supervisor import Supervisor
        sup = Supervisor(log_dir=Path({str(tmp_path)!r}), die_with_parent=True)
        child = sup.spawn("r0", ["sim", "replica", "--cold-start-s", "0"], listen=True)
        print(child.pid, child.url, flush=True)
        threading.Event().wait()
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid_text, url = parent.stdout.readline().split()
        pid = int(pid_text)
        assert httpx.get(url + "/health", timeout=60).status_code == 200
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs in the parent
        parent.wait(10)
        deadline = time.monotonic() + 20
        while alive(pid) and time.monotonic() < deadline:
            threading.Event().wait(0.1)
        assert not alive(pid), "the replica outlived its supervisor"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, NameError):
            pass


def test_stop_all_kills_a_child_that_ignores_sigterm(tmp_path):
    sup = Supervisor(log_dir=tmp_path)
    # `governor` with an unknown command exits at once; use a raw child instead.
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, threading; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
         "print('ready', flush=True); threading.Event().wait()"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    from controlplane.sim.supervisor import Child

    sup._children["stubborn"] = Child("stubborn", proc)  # adopt it
    started = time.monotonic()
    sup.stop_all(grace_s=0.5)
    assert proc.poll() == -signal.SIGKILL
    assert time.monotonic() - started < 10
    proc.stdout.close()
