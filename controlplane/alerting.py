"""``governor serve`` integration of the alert engine.

Builds ``alerts.engine.AlertEngine`` from ``config.alerting``, exposes it as
``ctx.services["alerts"]`` (the SLO evaluator calls ``process(signals, now)``; routes
read it) and runs a component that calls ``tick`` every ``alerting.tick_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import Gauge

from alerts.engine import AlertEngine
from alerts.errors import StateStoreError
from controlplane.clock import Clock
from controlplane.errors import StoreUnavailable
from controlplane.server import AppContext, register_builder

log = logging.getLogger(__name__)

SERVICE = "alerts"


class AlertingComponent:
    """A thread that flushes alert groups and sends due deliveries on a period."""

    name = "alerting"

    def __init__(self, engine: AlertEngine, clock: Clock, http: httpx.Client,
                 period_s: float) -> None:  # fmt: skip
        self._engine = engine
        self._clock = clock
        self._http = http
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="governor-alerting", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self._engine.tick(self._clock.now())
                self.last_error = ""
            except Exception as exc:  # keep the loop alive: the next tick retries
                self.last_error = str(exc)
                log.exception("alerting tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._engine.flush_writes()
        self._http.close()

    def health(self) -> dict[str, Any]:
        return {"ok": not self.last_error, "last_error": self.last_error, **self._engine.health()}


@register_builder
def build_alerting(ctx: AppContext) -> None:
    cfg = ctx.config.alerting
    http = httpx.Client(follow_redirects=False)
    try:
        engine = AlertEngine(
            store=ctx.store,
            config=cfg,
            clock=ctx.clock,
            http=http,
            evaluation_interval_s=ctx.config.evaluation_interval_s,
        )
    except StateStoreError as exc:
        http.close()
        raise StoreUnavailable(f"alerting cannot resume its state: {exc}") from exc
    ctx.services[SERVICE] = engine
    ctx.add(AlertingComponent(engine, ctx.clock, http, cfg.tick_s))
    for key, help_text in (
        ("firing", "Alerts firing now"),
        ("open_deliveries", "Notifications queued or being retried"),
        ("dead_letters", "Notifications that gave up (see /api/v1/alerts/dead-letters)"),
        ("buffered_writes", "Alert state writes waiting for the store"),
    ):
        g = Gauge(f"governor_alerts_{key}", help_text, registry=ctx.registry)
        g.set_function(_reader(engine, key))


def _reader(engine: AlertEngine, key: str) -> Callable[[], float]:
    return lambda: float(engine.health()[key])
