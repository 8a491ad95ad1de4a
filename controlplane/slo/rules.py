"""Alert rules: one evaluation -> ``AlertSignal`` per rule instance.

Per SLO: one signal per burn-rate tier (slower tiers muted while a faster one is
active), one for an exhausted budget, one for no data. Labels are stable (they make the
alert's fingerprint); values and wording go in annotations.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

from alerts.signals import AlertSignal
from controlplane.slo.burn import TierState
from controlplane.slo.spec import SLO
from controlplane.slo.windows import format_duration

ALERT_BURN = "SLOErrorBudgetBurn"
ALERT_EXHAUSTED = "SLOErrorBudgetExhausted"
ALERT_NO_DATA = "SLONoData"
TIER_BUDGET = "budget"
TIER_NO_DATA = "no-data"


class EvaluationLike(Protocol):
    """What rules read of an evaluation."""

    @property
    def state(self) -> str: ...
    @property
    def sli(self) -> float | None: ...
    @property
    def good(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def budget_remaining(self) -> float | None: ...
    @property
    def tiers(self) -> tuple[TierState, ...]: ...
    @property
    def shown_active(self) -> tuple[bool, ...]: ...


def _labels(slo: SLO, alertname: str, severity: str, tier: str) -> dict[str, str]:
    return {"alertname": alertname, "slo": slo.name, "pool": slo.selector.pool,
            "severity": severity, "tier": tier}  # fmt: skip


def _annotations(slo: SLO, summary: str, description: str, external_url: str) -> dict[str, str]:
    base = external_url.rstrip("/")
    return {
        "summary": summary,
        "description": description,
        "runbook_url": slo.alerting.runbook_url,
        "console_url": f"{base}/slos/{quote(slo.name, safe='')}" if base else "",
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def signals_for(slo: SLO, ev: EvaluationLike, external_url: str) -> list[AlertSignal]:
    out: list[AlertSignal] = []
    target = f"{slo.objective * 100:.6g}%"
    for ts, shown in zip(ev.tiers, ev.shown_active, strict=True):
        t = ts.tier
        long_l, short_l = format_duration(t.long_s), format_duration(t.short_s)
        summary = (
            f"SLO {slo.name} is burning its error budget {_fmt(ts.long_burn)}x "
            f"over {long_l} (tier {t.name}: {long_l} and {short_l} above {t.factor:g}x)"
        )
        desc = (f"Objective {target} over {slo.window.label}. Burn rate {_fmt(ts.long_burn)}x "
                f"over {long_l}, {_fmt(ts.short_burn)}x over {short_l}; budget remaining "
                f"{_fmt(ev.budget_remaining)}.")  # fmt: skip
        out.append(AlertSignal(
            labels=_labels(slo, ALERT_BURN, t.severity, t.name),
            annotations=_annotations(slo, summary, desc, external_url),
            active=shown, value=ts.long_burn, for_s=t.for_s,
        ))  # fmt: skip
    sev = slo.alerting.budget_exhausted_severity
    if sev:
        active = ev.state == "exhausted"
        summary = f"SLO {slo.name} has spent its error budget for {slo.window.label}"
        desc = (
            f"Objective {target}; SLI {_fmt(ev.sli)} over {ev.good}/{ev.total} good "
            f"events; budget remaining {_fmt(ev.budget_remaining)}."
        )
        out.append(AlertSignal(
            labels=_labels(slo, ALERT_EXHAUSTED, sev, TIER_BUDGET),
            annotations=_annotations(slo, summary, desc, external_url),
            active=active, value=ev.budget_remaining,
        ))  # fmt: skip
    if slo.alerting.no_data_after_s:
        after = format_duration(slo.alerting.no_data_after_s)
        summary = f"SLO {slo.name} has received no events for {after}"
        desc = (
            f"No requests or samples matched the SLO's selector in the last {after} "
            "(allowing for the evaluation offset); check the collectors and the pool."
        )
        out.append(AlertSignal(
            labels=_labels(slo, ALERT_NO_DATA, slo.alerting.no_data_severity, TIER_NO_DATA),
            annotations=_annotations(slo, summary, desc, external_url),
            active=ev.state == "no_data",
        ))  # fmt: skip
    return out
