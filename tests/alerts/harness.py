"""Test harness: a loopback HTTP receiver that records what arrives at virtual times,
and a builder for engines over the test store.

The receiver is a real HTTP server (``ThreadingHTTPServer`` on an ephemeral port); each
request is recorded with the ManualClock's time at arrival, and answered from a script
of responses (default 200), so tests can make it fail, throttle or reject.
"""

from __future__ import annotations

import json
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from alerts.engine import AlertEngine
from alerts.signals import AlertSignal
from controlplane.config import AlertingConfig


@dataclass
class Received:
    at: float  # virtual time of arrival
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


class Recorder:
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.received: list[Received] = []
        self.script: deque[Reply] = deque()
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                rec = Received(
                    outer.clock.now(), self.path,
                    {k.lower(): v for k, v in self.headers.items()}, body,
                )  # fmt: skip
                reply = outer.script.popleft() if outer.script else Reply()
                # Recorded before answering, so a sender that got its response always
                # finds its request in ``received``.
                with outer.arrived:
                    outer.received.append(rec)
                    outer.arrived.notify_all()
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        """Block (real time) until ``n`` requests arrived; for the real Alertmanager only."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= n, timeout=timeout)
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def alerting(receivers: list[dict[str, Any]], routes: list[dict[str, Any]],
             **extra: Any) -> AlertingConfig:  # fmt: skip
    return AlertingConfig.model_validate(
        {"receivers": receivers, "routes": routes, "external_url": "http://governor.test",
         **extra}
    )  # fmt: skip


class Harness:
    """An engine plus the virtual-time loop tests drive it with."""

    def __init__(self, store: Any, clock: Any, cfg: AlertingConfig, *, interval: float = 10.0,
                 env: dict[str, str] | None = None, seed: int = 7) -> None:  # fmt: skip
        self.store, self.clock, self.cfg, self.interval = store, clock, cfg, interval
        self.env = env or {}
        self.seed = seed
        self.http = httpx.Client()
        self.engine = self._build()

    def _build(self) -> AlertEngine:
        return AlertEngine(
            store=self.store, config=self.cfg, clock=self.clock, http=self.http,
            evaluation_interval_s=self.interval, rng=random.Random(self.seed), env=self.env,
        )  # fmt: skip

    def restart(self) -> AlertEngine:
        """A new engine over the same store, as after a process restart."""
        self.engine.flush_writes()
        self.engine = self._build()
        return self.engine

    def step(self, signals: list[AlertSignal]) -> None:
        now = self.clock.now()
        self.engine.process(signals, now)
        self.engine.tick(now)

    def run(self, seconds: float, signals: list[AlertSignal], every: float | None = None) -> None:
        """Evaluate every ``every`` (default: the interval) for ``seconds``, then stop."""
        every = every or self.interval
        end = self.clock.now() + seconds
        while self.clock.now() < end - 1e-9:
            self.clock.advance(every)
            self.step(signals)

    def close(self) -> None:
        self.http.close()


def sig(name: str = "SLOBurnRateHigh", active: bool = True, **labels: str) -> AlertSignal:
    base = {"alertname": name, "slo": "chat-ttft", "severity": "page"}
    base.update(labels)
    return AlertSignal(
        labels=base, annotations={"summary": f"{name} on {base['slo']}"}, active=active
    )


def webhook(recorder: Recorder, **extra: Any) -> dict[str, Any]:
    return {"name": "hook", "kind": "webhook", "url": recorder.url + "/hook", **extra}
