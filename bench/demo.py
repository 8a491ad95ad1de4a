"""How long ``governor demo`` takes to reach a serving state, and to stop.

Method: run ``governor demo --duration 0`` (default 3 replicas, 5 s cold start, traffic
on) in a subprocess with a fresh data directory; "serving" is the moment the banner with
URLs and tokens is printed (serve healthy, every replica healthy and routed), "stopped"
is the process exit after its ordered shutdown. The issue asks for under 3 minutes on a
fresh clone (the install itself, ``pip install -e .``, is not part of this figure).

Run: ``.venv/bin/python -m bench.demo [--runs 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "controlplane.cli", "demo", "--data-dir",
               str(Path(tmp) / "demo"), "--duration", "0"]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        serving = None
        for line in proc.stdout:
            if "Press Ctrl-C" in line:
                serving = time.monotonic() - t0
        code = proc.wait()
        total = time.monotonic() - t0
        proc.stdout.close()
        if code != 0 or serving is None:
            raise SystemExit(f"demo failed (exit {code})")
        return serving, total - serving


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    results = [one_run() for _ in range(args.runs)]
    for i, (up, down) in enumerate(results):
        print(f"run {i + 1}: serving after {up:.1f} s, stopped {down:.1f} s later")
    ups = [u for u, _ in results]
    downs = [d for _, d in results]
    print(
        f"median: serving {statistics.median(ups):.1f} s, shutdown {statistics.median(downs):.1f} s"
    )


if __name__ == "__main__":
    main()
