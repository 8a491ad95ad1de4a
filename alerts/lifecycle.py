"""The alert state machine, as Prometheus runs it for alerting rules.

Pure: given the previous instance (or None), this evaluation's signal (or None when the
rule no longer reports the instance) and the evaluation time, return the next instance
(or None when it is gone) and the transition, if any.

    inactive --active--> pending --for_s elapsed--> firing --clears--> resolved
                 (for_s == 0 goes straight to firing; pending that clears is dropped;
                  keep_firing_for_s holds firing after the condition clears;
                  resolved is kept RESOLVED_RETENTION_S, then dropped)
"""

from __future__ import annotations

from copy import copy
from dataclasses import replace

from alerts.model import FIRING, PENDING, RESOLVED, Alert, fingerprint
from alerts.signals import AlertSignal

# Prometheus keeps resolved alerts (and re-sends them) for 15 minutes.
RESOLVED_RETENTION_S = 15 * 60.0


def step(
    prev: Alert | None,
    signal: AlertSignal | None,
    now: float,
    *,
    valid_for_s: float,
    generator_url: str = "",
) -> tuple[Alert | None, str | None]:
    """Advance one instance by one evaluation; ``valid_for_s`` sets a firing alert's endsAt."""
    active = signal is not None and signal.active
    if active:
        assert signal is not None
        if prev is None or prev.state == RESOLVED:
            alert = Alert(
                fingerprint=fingerprint(signal.labels),
                labels=dict(signal.labels),
                state=PENDING,
                active_at=now,
            )
            transition: str | None = PENDING
        else:
            alert = copy(prev)  # shallow: labels are never mutated
            transition = None
        alert.annotations = dict(signal.annotations)
        alert.value = signal.value
        alert.for_s = signal.for_s
        alert.keep_firing_for_s = signal.keep_firing_for_s
        alert.generator_url = signal.generator_url or generator_url
        alert.last_active_at = now
        alert.last_eval_at = now
        active_at = now if alert.active_at is None else alert.active_at
        if alert.state == PENDING and now - active_at >= signal.for_s:
            alert.state = FIRING
            alert.fired_at = now
            transition = FIRING
        if alert.state == FIRING:
            alert.valid_until = now + valid_for_s
        return alert, transition

    if prev is None:
        return None, None
    if prev.state == PENDING:
        return None, None
    if prev.state == FIRING:
        alert = replace(prev, last_eval_at=now)
        if signal is not None:
            alert.annotations = dict(signal.annotations)
            alert.value = signal.value
        held = (
            alert.keep_firing_for_s > 0
            and alert.last_active_at is not None
            and now - alert.last_active_at < alert.keep_firing_for_s
        )
        if held:
            alert.valid_until = now + valid_for_s
            return alert, None
        alert.state = RESOLVED
        alert.resolved_at = now
        return alert, RESOLVED
    # Resolved: retained for re-sends, then forgotten.
    if prev.resolved_at is not None and now - prev.resolved_at >= RESOLVED_RETENTION_S:
        return None, None
    return prev, None
