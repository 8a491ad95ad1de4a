"""What rule evaluation hands to the alert lifecycle: one signal per alert rule instance.

The SLO engine produces these every evaluation; ``alerts`` turns their history into
pending / firing / resolved alerts, groups, routes and delivers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AlertSignal:
    """The state of one alert rule instance at one evaluation.

    ``labels`` identify the alert (its fingerprint is derived from them, so they must be
    stable: slo, pool, severity, tier, alertname); ``annotations`` may change freely.
    ``active`` says whether the condition holds now; ``for_s`` is how long it must hold
    before the alert fires (pending until then).
    """

    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    active: bool = False
    value: float | None = None
    for_s: float = 0.0
    # Seconds to keep firing after the condition clears (Prometheus keep_firing_for).
    keep_firing_for_s: float = 0.0
    # Link back to what produced the alert (an SLO page in the console); optional.
    generator_url: str = ""
