"""Governor's own Prometheus metrics for SLOs, read from the evaluator's latest results.

A collector (not gauges set per cycle) so a removed SLO disappears from ``/metrics``
and nothing is exported before the first evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.slo.evaluate import STATES, Evaluator


class SloCollector(Collector):
    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def collect(self) -> Iterator[Metric]:
        latest = dict(self.evaluator.latest)  # copy: the scheduler thread may replace it
        sli = GaugeMetricFamily("governor_slo_sli", "SLI over the SLO window (0..1)",
                                labels=["slo", "pool"])  # fmt: skip
        budget = GaugeMetricFamily("governor_slo_budget_remaining",
                                   "Share of the error budget left (below 0: overspent)",
                                   labels=["slo", "pool"])  # fmt: skip
        burn = GaugeMetricFamily("governor_slo_burn_rate", "Burn rate over a window",
                                 labels=["slo", "pool", "window"])  # fmt: skip
        objective = GaugeMetricFamily("governor_slo_objective", "Objective (0..1)",
                                      labels=["slo", "pool"])  # fmt: skip
        state = GaugeMetricFamily("governor_slo_state", "1 for the SLO's current state",
                                  labels=["slo", "pool", "state"])  # fmt: skip
        for name, ev in sorted(latest.items()):
            objective.add_metric([name, ev.pool], ev.objective)
            if ev.sli is not None:
                sli.add_metric([name, ev.pool], ev.sli)
            if ev.budget_remaining is not None:
                budget.add_metric([name, ev.pool], ev.budget_remaining)
            for window, rate in sorted(ev.burn_rates.items()):
                burn.add_metric([name, ev.pool, window], rate)
            for s in STATES:
                state.add_metric([name, ev.pool, s], 1.0 if ev.state == s else 0.0)
        yield from (sli, budget, burn, objective, state)
        if self.evaluator.cycles:
            yield self._held_hours()

    def _held_hours(self) -> Metric:
        """Where the whole hours of the windows came from: after a restart, ``restored``
        (saved by the process before) rather than ``read`` from the rollups."""
        hours = self.evaluator.hours
        fam = CounterMetricFamily("governor_slo_held_hours",
                                  "Whole hours of SLO windows, by how they were obtained",
                                  labels=["how"])  # fmt: skip
        fam.add_metric(["read"], hours.hours_read)
        fam.add_metric(["restored"], hours.saved.hours_loaded if hours.saved else 0)
        fam.add_metric(["saved"], hours.saved.hours_saved if hours.saved else 0)
        return fam
