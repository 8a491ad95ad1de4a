"""The alert engine: lifecycle, grouping, silences and delivery behind one object.

``process(signals, now)`` runs after every SLO evaluation (the complete set of signals of
that evaluation: an instance missing from it is treated as inactive, as Prometheus does).
``tick(now)`` flushes due groups and sends due deliveries; ``serve`` calls it every
``alerting.tick_s`` from its own thread, tests call it at virtual times.

State lives in memory and is written through to the store (buffered across outages);
a new engine over the same store resumes from it: firing alerts stay firing, the
notification log keeps it from paging again, open deliveries are retried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from alerts import lifecycle, notifiers
from alerts.delivery import DeliveryQueue, RetryPolicy
from alerts.delivery_model import DEAD, OPEN, Delivery
from alerts.dispatch import Dispatcher
from alerts.errors import DeliveryError, InvalidInput, NotFound
from alerts.model import FIRING, RESOLVED, Alert, fingerprint
from alerts.nflog import RETENTION_S, NflogEntry, NotificationLog
from alerts.routing import Route, compile_routes, routes_for
from alerts.signals import AlertSignal
from alerts.silences import parse_silence
from alerts.storage import AlertStorage
from controlplane.clock import Clock
from controlplane.config import AlertingConfig
from controlplane.store.base import Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0  # firing alerts are re-persisted at least this often (last eval time)
SILENCE_RETENTION_S = 120 * 3600.0
PUSH_GROUP = ""  # Alertmanager pushes are not grouped
SEND_WORKERS = 8


class AlertEngine:
    def __init__(
        self,
        *,
        store: Store,
        config: AlertingConfig,
        clock: Clock,
        http: httpx.Client,
        evaluation_interval_s: float = 10.0,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._cfg = config
        self._clock = clock
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._receivers = {r.name: r for r in config.receivers}
        self._routes = compile_routes(config.routes)
        # Prometheus: endsAt = eval time + 4 x max(interval, resend delay), so Alertmanager
        # does not time an alert out between two pushes.
        self._valid_for = 4 * max(evaluation_interval_s, config.resend_delay_s)
        self._storage = AlertStorage(store)
        now = clock.now()
        self._alerts = {a.fingerprint: a for a in self._storage.load_alerts()}
        self._persisted_at = {fp: now for fp in self._alerts}
        self._nflog = NotificationLog(self._storage.load_nflog(now - RETENTION_S))
        self._silences = {s.id: s for s in self._storage.load_silences()}
        self._dispatcher = Dispatcher(
            self._nflog, {r.name: r.send_resolved for r in config.receivers}
        )
        self._queue = DeliveryQueue(
            http=http,
            receivers=self._receivers,
            policy=RetryPolicy(
                config.retry_initial_s, config.retry_max_s, config.retry_max_attempts,
                config.retry_max_age_s,
            ),
            rng=rng or random.Random(),
            env=os.environ if env is None else env,
            persist=self._storage.save_delivery,
        )  # fmt: skip
        deliveries = self._storage.load_deliveries(since=now - RETENTION_S)
        self._queue.restore(deliveries)
        self._dead = {d.id: d for d in deliveries if d.status == DEAD}
        self._pushed_at: dict[tuple[str, str], float] = {}
        self._in_flight: set[str] = set()  # being sent by tick(), outside the lock
        self.rejected_signals = 0
        for a in self._alerts.values():
            if a.state == FIRING:
                a.valid_until = a.last_eval_at + self._valid_for
            # Resume notifications: the nflog decides whether anything is news.
            if a.state in (FIRING, RESOLVED):
                self._route(a, now)
        log.info("alert engine resumed %d alerts, %d open deliveries",
                 len(self._alerts), len(self._queue.open))  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------
    def process(self, signals: Sequence[AlertSignal], now: float) -> None:
        """Apply one evaluation's signals at ``now`` (epoch seconds)."""
        with self._lock:
            by_fp: dict[str, AlertSignal] = {}
            for s in signals:
                problem = _check_signal(s)
                if problem:
                    self.rejected_signals += 1
                    log.error("alert signal rejected: %s", problem)
                    continue
                fp = fingerprint(s.labels)
                if fp not in by_fp or (s.active and not by_fp[fp].active):
                    by_fp[fp] = s
            for fp in sorted(set(self._alerts) | set(by_fp)):
                self._advance(fp, by_fp.get(fp), now)
            self._push_alertmanager(now)
        self._storage.flush()

    def _advance(self, fp: str, sig: AlertSignal | None, now: float) -> None:
        prev = self._alerts.get(fp)
        labels = sig.labels if sig is not None else (prev.labels if prev else {})
        nxt, transition = lifecycle.step(
            prev, sig, now, valid_for_s=self._valid_for, generator_url=self._link(labels)
        )
        if nxt is None:
            if prev is not None:
                del self._alerts[fp]
                self._persisted_at.pop(fp, None)
                self._storage.save_alert(prev, now, tombstone=True)
            return
        self._alerts[fp] = nxt
        changed = (
            prev is None
            or transition is not None
            or ((nxt.annotations, nxt.value) != (prev.annotations, prev.value))
        )
        if changed or now - self._persisted_at.get(fp, 0.0) >= HEARTBEAT_S:
            self._storage.save_alert(nxt, now)
            self._persisted_at[fp] = now
        if transition is not None:
            self._storage.save_event(nxt, now)
        if nxt.state == FIRING or transition == RESOLVED:
            self._route(nxt, now)

    def _link(self, labels: Mapping[str, str]) -> str:
        base = self._cfg.external_url.rstrip("/")
        slo = labels.get("slo")
        return f"{base}/api/v1/slos/{slo}" if slo else f"{base}/api/v1/alerts"

    def _route(self, a: Alert, now: float) -> None:
        for r in routes_for(self._routes, a.labels):
            if self._receivers[r.receiver].kind != "alertmanager":
                self._dispatcher.insert(r, a, now)

    # -- notifications --------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Flush due groups and send due deliveries (the network I/O happens unlocked)."""
        with self._send_lock:
            with self._lock:
                self._flush_groups(now)
                self._nflog.gc(now)
                due = self._queue.due(now)
                self._in_flight = {d.id for d in due}
            errors = self._send_all(due, now)
            with self._lock:
                self._in_flight = set()
                for d, err in zip(due, errors, strict=True):  # in due order: seeded jitter
                    self._queue.settle(d, err, now)
                    if d.status == DEAD:
                        self._dead[d.id] = d
        self._storage.flush()

    def _send_all(self, due: list[Delivery], now: float) -> list[DeliveryError | None]:
        """Send in parallel, so one slow receiver does not hold up the others."""
        if len(due) <= 1:
            return [self._queue.attempt(d, now) for d in due]
        workers = min(SEND_WORKERS, len(due))
        with ThreadPoolExecutor(workers, thread_name_prefix="governor-alert-send") as pool:
            return list(pool.map(lambda d: self._queue.attempt(d, now), due))

    def _flush_groups(self, now: float) -> None:
        muted = self._muted(now)
        for f in self._dispatcher.flush_due(now, lambda a: bool(muted(a.labels))):
            rcv = self._receivers[f.route.receiver]
            delivery_id = ""
            digest = ""
            if f.alerts:
                n = notifiers.Notification(
                    rcv.name, f.group_key, f.group_labels, f.alerts, self._cfg.external_url
                )
                body = notifiers.render(rcv.kind, n)
                digest = hashlib.sha256(body.encode()).hexdigest()
                d = self._new_delivery(rcv.name, rcv.kind, f.group_key, body, f.alerts)
                self._queue.enqueue(d, now, in_flight=self._in_flight)
                delivery_id = d.id
            # Logged when queued: the queue is persisted and delivers at least once.
            entry = NflogEntry(rcv.name, f.group_key, now, f.firing, f.resolved, digest,
                               delivery_id)  # fmt: skip
            self._nflog.log(entry)
            self._storage.save_nflog(entry, now)

    def _new_delivery(
        self, receiver: str, kind: str, group_key: str, body: str, alerts: Sequence[Alert]
    ) -> Delivery:
        return Delivery(
            id=f"msg_{uuid.uuid4().hex}", receiver=receiver, kind=kind, group_key=group_key,
            url=notifiers.target_url(self._receivers[receiver]), body=body,
            fingerprints=tuple(a.fingerprint for a in alerts),
        )  # fmt: skip

    def _push_alertmanager(self, now: float) -> None:
        """Prometheus' notifier: push active alerts, re-sent every resend delay."""
        delay = self._cfg.resend_delay_s
        for rcv in self._receivers.values():
            if rcv.kind != "alertmanager":
                continue
            mine = [
                a for a in self._alerts.values()
                if a.state in (FIRING, RESOLVED)
                and any(r.receiver == rcv.name for r in routes_for(self._routes, a.labels))
            ]  # fmt: skip
            due = False
            for a in mine:
                last = self._pushed_at.get((rcv.name, a.fingerprint))
                if last is None or (a.resolved_at or 0) > last or last + delay < now:
                    due = True
            if not due:
                continue
            mine.sort(key=lambda a: sorted(a.labels.items()))
            body = notifiers.json_dumps(notifiers.alertmanager_payload(mine))
            d = self._new_delivery(rcv.name, rcv.kind, PUSH_GROUP, body, mine)
            # Supersedes a queued older push: this one carries the same alerts' newer state.
            self._queue.enqueue(d, now, in_flight=self._in_flight)
            for a in mine:
                self._pushed_at[(rcv.name, a.fingerprint)] = now

    # -- silences -------------------------------------------------------------------------
    def _muted(self, now: float) -> Callable[[Mapping[str, str]], list[str]]:
        active = [s for s in self._silences.values() if s.state(now) == "active"]
        return lambda labels: [s.id for s in active if s.mutes(labels, now)]

    def create_silence(self, data: Any, *, created_by: str = "") -> dict[str, Any]:
        now = self._clock.now()
        s = parse_silence(data, now=now, created_by=created_by)
        with self._lock:
            self._silences[s.id] = s
            self._storage.save_silence(s, now)
        self._storage.flush()
        return s.as_dict(now)

    def list_silences(self, *, include_expired: bool = True) -> list[dict[str, Any]]:
        now = self._clock.now()
        with self._lock:
            for sid in [k for k, s in self._silences.items()
                        if s.ends_at < now - SILENCE_RETENTION_S]:  # fmt: skip
                del self._silences[sid]
            items = sorted(self._silences.values(), key=lambda s: s.starts_at)
        return [s.as_dict(now) for s in items if include_expired or s.state(now) != "expired"]

    def get_silence(self, silence_id: str) -> dict[str, Any]:
        with self._lock:
            s = self._silences.get(silence_id)
        if s is None:
            raise NotFound(f"no silence with id {silence_id!r}")
        return s.as_dict(self._clock.now())

    def expire_silence(self, silence_id: str) -> dict[str, Any]:
        now = self._clock.now()
        with self._lock:
            s = self._silences.get(silence_id)
            if s is None:
                raise NotFound(f"no silence with id {silence_id!r}")
            s = s.expire(now)
            self._silences[s.id] = s
            self._storage.save_silence(s, now)
        self._storage.flush()
        return s.as_dict(now)

    # -- reads ----------------------------------------------------------------------------
    def firing(self, slo: str | None = None) -> list[dict[str, Any]]:
        return self.alerts(state=FIRING, slo=slo)

    def alerts(self, *, state: str | None = None, slo: str | None = None) -> list[dict[str, Any]]:
        now = self._clock.now()
        with self._lock:
            muted = self._muted(now)
            out = []
            for a in sorted(self._alerts.values(), key=lambda x: sorted(x.labels.items())):
                if (state and a.state != state) or (slo and a.labels.get("slo") != slo):
                    continue
                item = a.as_dict()
                ids = muted(a.labels)
                item["silenced"] = bool(ids)
                item["silencedBy"] = ids
                item["receivers"] = self._delivery_status(a, bool(ids))
                out.append(item)
            return out

    def _delivery_status(self, a: Alert, silenced: bool) -> list[dict[str, Any]]:
        out = []
        for r in routes_for(self._routes, a.labels):
            kind = self._receivers[r.receiver].kind
            gk = PUSH_GROUP if kind == "alertmanager" else r.group_key(a.labels)
            d = self._queue.latest.get((r.receiver, gk))
            entry: dict[str, Any] = {"receiver": r.receiver, "groupKey": gk}
            if a.state == "pending":
                entry["status"] = "not-notified"
            elif d is not None and a.fingerprint in d.fingerprints:
                entry.update(status=d.status, deliveryId=d.id, attempts=d.attempts,
                             lastError=d.last_error)  # fmt: skip
            else:
                entry["status"] = "silenced" if silenced else "pending"
            out.append(entry)
        return out

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._lock:
            items = sorted(self._dead.values(), key=lambda d: d.updated_at, reverse=True)
            return [d.as_dict() | {"body": d.body} for d in items]

    def requeue(self, delivery_id: str) -> dict[str, Any]:
        now = self._clock.now()
        with self._lock:
            d = self._dead.pop(delivery_id, None)
            if d is None:
                raise NotFound(f"no dead letter with id {delivery_id!r}")
            self._queue.requeue(d, now)
        self._storage.flush()
        return d.as_dict()

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "alerts": len(self._alerts),
                "firing": sum(1 for a in self._alerts.values() if a.state == FIRING),
                "groups": len(self._dispatcher.groups),
                "open_deliveries": sum(1 for d in self._queue.open.values() if d.status in OPEN),
                "dead_letters": len(self._dead),
                "buffered_writes": self._storage.pending_writes(),
                "rejected_signals": self.rejected_signals,
            }

    def routes(self) -> list[Route]:
        return list(self._routes)

    def flush_writes(self) -> bool:
        return self._storage.flush()


def _check_signal(s: Any) -> str:
    if not isinstance(s, AlertSignal):
        return f"expected AlertSignal, got {type(s).__name__}"
    if not s.labels or not all(isinstance(k, str) and isinstance(v, str)
                               for k, v in s.labels.items()):  # fmt: skip
        return f"labels must be a non-empty str -> str mapping, got {s.labels!r}"
    if "alertname" not in s.labels:
        return f"labels need an alertname: {s.labels!r}"
    if not all(isinstance(v, str) for v in s.annotations.values()):
        return f"annotations must map to strings: {s.annotations!r} (labels {s.labels!r})"
    if s.for_s < 0 or s.keep_firing_for_s < 0:
        return f"for_s and keep_firing_for_s must be >= 0 (labels {s.labels!r})"
    return ""


__all__ = ["AlertEngine", "InvalidInput", "NotFound"]
