"""``governor serve`` integration of the scraper: a component, target health for the policy.

The scraper's rows go to the shared writer (``ctx.services["writer"]``), which batches them
into ``replica_samples``/``gpu_samples`` and spools them while the store is down. Target
health lives in ``ctx.services["scrape"]`` (a ``ScrapeService``): the policy asks it which
replicas are down, the API lists it at ``GET /api/v1/targets``, and ``/metrics`` exports it
as ``governor_scrape_*`` series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from collector.records import Sink
from collector.scrape import Scraper, TargetHealth
from collector.scrape_targets import FileDiscovery, static_targets
from controlplane.config import GovernorConfig
from controlplane.server import AppContext, register_builder

log = logging.getLogger(__name__)

SERVICE = "scrape"


class ScrapeService:
    """The scrape loop as a ``Component`` plus the questions other parts ask about targets."""

    name = "scrape"

    def __init__(self, scraper: Scraper) -> None:
        self.scraper = scraper
        self._running = False

    # --- Component ------------------------------------------------------------------

    def start(self) -> None:
        if self.scraper.targets() or self.scraper.has_discovery:
            self.scraper.start()
            self._running = True

    def stop(self) -> None:
        if self._running:
            self.scraper.stop()
            self._running = False

    def health(self) -> dict[str, Any]:
        targets = self.scraper.health()
        return {
            "running": self._running,
            "targets": len(targets),
            "up": sum(1 for t in targets if t.up),
            "down": sum(1 for t in targets if t.up is False),
            "discovery_errors": self.scraper.discovery_errors(),
        }

    # --- for the policy and the API --------------------------------------------------

    def targets(self) -> list[TargetHealth]:
        return self.scraper.health()

    def replica_up(self, pool: str, replica: str) -> bool | None:
        """Whether the engine target of ``pool``/``replica`` answered its last scrape.

        ``None`` when Governor scrapes no such replica or has not scraped it yet.
        """
        for t in self.scraper.health():
            if t.pool == pool and (t.replica or _instance(t.url)) == replica:
                return t.up
        return None

    def down_replicas(self, pool: str | None = None) -> list[str]:
        return sorted(
            t.replica or _instance(t.url)
            for t in self.scraper.health()
            if t.up is False
            and t.kind not in ("dcgm", "agent")
            and (pool is None or t.pool == pool)
        )


def _instance(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc


class _HealthCollector(Collector):
    def __init__(self, service: ScrapeService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        labels = ["url", "kind", "pool", "replica"]
        up = GaugeMetricFamily(
            "governor_scrape_target_up", "1 if the target's last scrape succeeded.", labels=labels
        )
        dur = GaugeMetricFamily(
            "governor_scrape_duration_seconds",
            "Duration of the target's last scrape.",
            labels=labels,
        )
        fails = GaugeMetricFamily(
            "governor_scrape_consecutive_failures", "Scrapes failed in a row.", labels=labels
        )
        for t in self.service.targets():
            lv = [t.url, t.kind, t.pool, t.replica]
            if t.up is not None:
                up.add_metric(lv, 1.0 if t.up else 0.0)
            if t.duration_s is not None:
                dur.add_metric(lv, t.duration_s)
            fails.add_metric(lv, float(t.consecutive_failures))
        sd = GaugeMetricFamily(
            "governor_scrape_discovery_file_error",
            "1 while a file_sd file cannot be used.",
            labels=["file"],
        )
        for path in sorted(self.service.scraper.discovery_errors()):
            sd.add_metric([path], 1.0)
        yield from (up, dur, fails, sd)


def scraper_from_config(cfg: GovernorConfig, sink: Sink, clock: Any = None) -> Scraper:
    sc = cfg.scrape
    targets = static_targets(t.model_dump() for t in sc.targets)
    discovery = FileDiscovery([cfg.resolve(p) for p in sc.file_sd]) if sc.file_sd else None
    return Scraper(
        sink,
        targets=targets,
        discovery=discovery,
        interval_s=sc.interval_s,
        timeout_s=sc.timeout_s,
        concurrency=sc.concurrency,
        clock=clock,
    )


def _writer(ctx: AppContext) -> Sink:
    # One writer per serve process, shared with the OTLP ingest (built from ``writer:``),
    # reached through the tracker that lends the pricer each replica's concurrency.
    from controlplane.ingest import shared_concurrency

    return shared_concurrency(ctx)


@register_builder
def build_scrape(ctx: AppContext) -> None:
    service = ScrapeService(scraper_from_config(ctx.config, _writer(ctx), ctx.clock))
    ctx.services[SERVICE] = service
    ctx.registry.register(_HealthCollector(service))
    ctx.add(service)


__all__ = ["SERVICE", "ScrapeService", "build_scrape", "scraper_from_config"]
