"""One evaluation cycle: every SLO's SLI, burn rates, budget and alert signals.

``Evaluator.run_once`` reads the rollups for each SLO (one query per SLO), writes the
results to ``slo_evaluations`` and hands the alert signals to the alerts service.
A store outage while writing loses nothing: rows wait in a bounded buffer and are
written with the next cycle. Time comes only from the injected clock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from alerts.signals import AlertSignal
from controlplane.clock import Clock, utc
from controlplane.errors import GovernorError, StoreError, StoreUnavailable
from controlplane.slo import results
from controlplane.slo.burn import (
    Counts,
    TierState,
    budget_remaining,
    burn_rate,
    suppress_slower,
    tier_states,
    time_to_exhaustion,
)
from controlplane.slo.hour_state import HourState
from controlplane.slo.hours import HourCache
from controlplane.slo.rules import signals_for
from controlplane.slo.sli import occurrences_many, window_counts
from controlplane.slo.spec import SLO
from controlplane.slo.windows import format_duration
from controlplane.store.base import Store
from controlplane.store.rollups import floor_minute

log = logging.getLogger(__name__)

STATES = ("ok", "burning", "exhausted", "insufficient_data", "no_data", "error")
_WINDOW, _NO_DATA = "__window", "__no_data"


class AlertSink(Protocol):
    def process(self, signals: Sequence[AlertSignal], now: float) -> None: ...


@dataclass(frozen=True)
class Evaluation:
    slo: str
    pool: str
    evaluated_at: float
    until: datetime  # end of the data read: now - offset, floored to the minute
    state: str
    objective: float
    window: str
    sli: float | None = None
    good: int = 0
    total: int = 0
    budget_remaining: float | None = None
    burn_rates: dict[str, float] = field(default_factory=dict)
    time_to_exhaustion_s: float | None = None
    tiers: tuple[TierState, ...] = ()
    shown_active: tuple[bool, ...] = ()
    error: str = ""

    def detail(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "until": self.until.isoformat().replace("+00:00", "Z"),
            "time_to_exhaustion_s": self.time_to_exhaustion_s,
            "tiers": [
                {"name": t.tier.name, "severity": t.tier.severity,
                 "long": format_duration(t.tier.long_s), "short": format_duration(t.tier.short_s),
                 "factor": t.tier.factor, "long_burn": t.long_burn, "short_burn": t.short_burn,
                 "active": shown}
                for t, shown in zip(self.tiers, self.shown_active, strict=True)
            ],
            "error": self.error,
        }  # fmt: skip

    def row(self) -> tuple[Any, ...]:
        return (
            utc(self.evaluated_at), self.slo, self.pool, self.state, self.sli, self.good,
            self.total, self.objective, self.budget_remaining, self.burn_rates,
            json.dumps(self.detail()),
        )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What one SLO needs read at one instant: window starts keyed by label."""

    until: datetime
    window_s: int
    sinces: dict[str, datetime]


def plan(slo: SLO, now: float) -> Plan:
    al = slo.alerting
    until = floor_minute(utc(now - al.offset_s))
    start, window_s = slo.window.bounds(until)
    sinces: dict[str, datetime] = {_WINDOW: start}
    for t in al.tiers:
        for secs in (t.long_s, t.short_s):
            sinces[format_duration(secs)] = until - timedelta(seconds=secs)
    if al.no_data_after_s:
        sinces[_NO_DATA] = until - timedelta(seconds=al.no_data_after_s)
    return Plan(until, window_s, sinces)


def evaluate_slo(store: Store, slo: SLO, now: float, cache: HourCache | None = None) -> Evaluation:
    """Evaluate one SLO at ``now`` (reads the store; everything else is pure)."""
    p = plan(slo, now)
    return finish(slo, now, p, window_counts(store, slo, p.until, p.sinces, cache))


def finish(slo: SLO, now: float, p: Plan, counts: dict[str, Counts]) -> Evaluation:
    """The pure part: burn rates, budget, tiers and state from the counts read."""
    al, until, window_s = slo.alerting, p.until, p.window_s
    by_secs = {t_s: counts[format_duration(t_s)] for t in al.tiers for t_s in (t.long_s, t.short_s)}
    states = tier_states(al.tiers, by_secs, slo.objective, al.min_events)
    shown = tuple(suppress_slower(states))
    burns = {k: b for k, c in counts.items() if not k.startswith("__")
             if (b := burn_rate(c, slo.objective)) is not None}  # fmt: skip
    whole: Counts = counts[_WINDOW]
    enough = whole.total >= max(al.min_events, 1)
    remaining = budget_remaining(whole, slo.objective) if enough else None
    fastest = min(al.tiers, key=lambda t: t.long_s) if al.tiers else None
    current = burns.get(format_duration(fastest.long_s)) if fastest else None
    no_data = counts[_NO_DATA].total == 0 if al.no_data_after_s else whole.total == 0
    if no_data:
        state = "no_data"
    elif not enough:
        state = "insufficient_data"
    elif remaining is not None and remaining <= 0:
        state = "exhausted"
    elif any(shown):
        state = "burning"
    else:
        state = "ok"
    return Evaluation(
        slo=slo.name, pool=slo.selector.pool, evaluated_at=now, until=until, state=state,
        objective=slo.objective, window=slo.window.label,
        sli=whole.ratio if enough else None, good=whole.good, total=whole.total,
        budget_remaining=remaining, burn_rates=burns,
        time_to_exhaustion_s=time_to_exhaustion(remaining, current, window_s),
        tiers=tuple(states), shown_active=shown,
    )  # fmt: skip


class Evaluator:
    """Evaluates all SLOs; safe to call from the scheduler and the API at once."""

    def __init__(
        self,
        store: Store,
        slos: Sequence[SLO],
        *,
        clock: Clock,
        external_url: str = "",
        alerts: Callable[[], AlertSink | None] | None = None,
        max_pending_rows: int = 100_000,
        save_hours: bool = True,
    ) -> None:
        self.store = store
        self.slos = {s.name: s for s in slos}
        self.clock = clock
        self.external_url = external_url
        self._alerts = alerts or (lambda: None)
        self._pending: deque[tuple[Any, ...]] = deque(maxlen=max_pending_rows)
        self._lock = threading.Lock()
        self.latest: dict[str, Evaluation] = {}
        self.hours = HourCache(HourState() if save_hours else None)
        self.cycles = 0
        self.last_error = ""

    @property
    def pending_rows(self) -> int:
        return len(self._pending)

    def run_once(self, now: float | None = None) -> list[Evaluation]:
        with self._lock:
            now = self.clock.now() if now is None else now
            out: list[Evaluation] = []
            signals: list[AlertSignal] = []
            batched = self._batched(now)
            for slo in self.slos.values():
                try:
                    ev = batched.get(slo.name) or evaluate_slo(self.store, slo, now, self.hours)
                except GovernorError as exc:
                    log.warning("evaluating SLO %s failed: %s", slo.name, exc)
                    ev = Evaluation(slo.name, slo.selector.pool, now, utc(now), "error",
                                    slo.objective, slo.window.label, error=str(exc))  # fmt: skip
                else:
                    # An SLO that could not be read sends no signals: alerts keep their state.
                    signals += signals_for(slo, ev, self.external_url)
                out.append(ev)
                self.latest[slo.name] = ev
            self._write([ev.row() for ev in out])
            self._notify(signals, now)
            # The hours read are saved after the cycle: its results do not wait for them.
            self.hours.flush(self.store, background=True)
            self.cycles += 1
            errors = [ev for ev in out if ev.state == "error"]
            self.last_error = errors[0].error if errors else ""
            return out

    def close(self) -> None:
        """Write the hours a cycle read and has not saved yet (a stop keeps them)."""
        with self._lock:
            self.hours.flush(self.store)

    def _batched(self, now: float) -> dict[str, Evaluation]:
        """Occurrences SLOs ending at the same minute share one edge-minute query.

        If the batch fails, every SLO is retried alone so one bad SLO cannot hide
        the others' results.
        """
        groups: dict[datetime, list[tuple[SLO, Plan]]] = {}
        for slo in self.slos.values():
            if slo.budgeting.method == "occurrences" and slo.sli.kind != "gauge":
                p = plan(slo, now)
                groups.setdefault(p.until, []).append((slo, p))
        out: dict[str, Evaluation] = {}
        for until, members in groups.items():
            items = [(slo, [min(s, until) for s in p.sinces.values()]) for slo, p in members]
            try:
                counts = occurrences_many(self.store, until, items, self.hours)
            except GovernorError as exc:
                log.warning("batched evaluation of %d SLOs failed, one by one: %s",
                            len(items), exc)  # fmt: skip
                continue
            for (slo, p), c in zip(members, counts, strict=True):
                out[slo.name] = finish(slo, now, p, dict(zip(p.sinces, c, strict=True)))
        return out

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        self._pending.extend(rows)
        batch = list(self._pending)
        try:
            results.write(self.store, batch)
        except StoreUnavailable as exc:
            log.warning("writing %d SLO evaluations failed, kept for the next cycle: %s",
                        len(batch), exc)  # fmt: skip
            return
        except StoreError as exc:  # the rows themselves are rejected: retrying cannot help
            log.error("dropping %d SLO evaluations the store rejected: %s", len(batch), exc)
        self._pending.clear()

    def _notify(self, signals: list[AlertSignal], now: float) -> None:
        sink = self._alerts()
        if sink is None:
            return
        try:
            sink.process(signals, now)
        except Exception:  # the alerts service's failure must not stop SLO evaluation
            log.exception("alerts service failed to process %d signals", len(signals))
