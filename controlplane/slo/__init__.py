"""The SLO engine: specs, SLIs read from the rollups, budgets, burn rates, alert rules.

spec.py      SLO files (Governor YAML and OpenSLO v1) -> frozen ``SLO`` objects
windows.py   durations, calendar windows and the alert tiers rescaled per SLO
sli.py       the only SQL: good/total counts per window from the rollups
burn.py      pure maths: burn rates, budget remaining, time to exhaustion
rules.py     evaluation -> ``alerts.signals.AlertSignal`` (tiers, budget, no data)
evaluate.py  one evaluation cycle for all SLOs, written to ``slo_evaluations``
scheduler.py the apscheduler job ``governor serve`` runs
metrics.py   SLO values on Governor's own /metrics
"""

from __future__ import annotations

from controlplane.slo.errors import SloError, SpecError
from controlplane.slo.evaluate import Evaluation, Evaluator
from controlplane.slo.spec import SLO, load_slos, parse_slos

__all__ = [
    "SLO",
    "Evaluation",
    "Evaluator",
    "SloError",
    "SpecError",
    "load_slos",
    "parse_slos",
]
