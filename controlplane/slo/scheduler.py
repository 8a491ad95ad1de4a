"""The evaluation job ``governor serve`` runs, and its wiring into the server.

An apscheduler ``BackgroundScheduler`` runs ``Evaluator.run_once`` every
``evaluation_interval_s`` with ``max_instances=1`` and ``coalesce=True``: a slow cycle
delays the next one instead of stacking runs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from controlplane.server import register_builder
from controlplane.slo.evaluate import AlertSink, Evaluator
from controlplane.slo.metrics import SloCollector
from controlplane.slo.spec import load_slos

if TYPE_CHECKING:
    from controlplane.server import AppContext

log = logging.getLogger(__name__)
SERVICE = "slo"
JOB_ID = "slo-evaluation"
_EXECUTOR = "slo"
# apscheduler logs two INFO lines per run through this executor's logger: at a 10 s
# interval that drowns everything else, so only its warnings (misses, errors) go through.
logging.getLogger(f"apscheduler.executors.{_EXECUTOR}").setLevel(logging.WARNING)


class SloScheduler:
    """Component: runs the evaluator on an interval in a background thread."""

    name = "slo-scheduler"

    def __init__(self, evaluator: Evaluator, interval_s: float) -> None:
        self.evaluator = evaluator
        self.interval_s = interval_s
        self._scheduler: BackgroundScheduler | None = None
        self.last_duration_s: float | None = None
        self.failures = 0

    def _tick(self) -> None:
        start = time.perf_counter()
        try:
            self.evaluator.run_once()
        except Exception:  # the job must keep running through store outages
            self.failures += 1
            log.exception("SLO evaluation cycle failed")
        self.last_duration_s = time.perf_counter() - start

    def start(self) -> None:
        sched = BackgroundScheduler(timezone="UTC", executors={_EXECUTOR: ThreadPoolExecutor(1)})
        sched.add_job(
            self._tick, "interval", seconds=self.interval_s, id=JOB_ID, executor=_EXECUTOR,
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )  # fmt: skip
        sched.start()
        self._scheduler = sched

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.evaluator.close()

    def health(self) -> dict[str, Any]:
        ev = self.evaluator
        return {
            "running": self._scheduler is not None,
            "slos": len(ev.slos),
            "cycles": ev.cycles,
            "failed_cycles": self.failures,
            "last_duration_s": self.last_duration_s,
            "pending_rows": ev.pending_rows,
            "last_error": ev.last_error,
        }


@register_builder
def build(ctx: AppContext) -> None:
    """Load the configured SLOs (an invalid file stops ``serve`` with every problem)."""
    cfg = ctx.config
    slos = load_slos(cfg.resolve(cfg.slos)) if cfg.slos else []

    def alerts() -> AlertSink | None:
        # Looked up per cycle: the alerts builder may run after this one.
        sink: AlertSink | None = ctx.services.get("alerts")
        return sink

    evaluator = Evaluator(
        ctx.store, slos, clock=ctx.clock, external_url=cfg.alerting.external_url, alerts=alerts
    )
    ctx.services[SERVICE] = evaluator
    ctx.registry.register(SloCollector(evaluator))
    ctx.add(SloScheduler(evaluator, cfg.evaluation_interval_s))
