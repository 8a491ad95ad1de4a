"""All SQL of the alerting tables, and a write buffer that survives store outages.

Writes are versioned rows (newest version per key wins), so a buffered write replayed
after an outage is still correct, and several buffered versions of one key collapse
into the newest. Events (``alert_events``) are appended in order.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from alerts.delivery_model import Delivery
from alerts.errors import StateStoreError
from alerts.model import Alert
from alerts.nflog import NflogEntry
from alerts.silences import Matcher, Silence
from controlplane import conventions as cv
from controlplane.errors import StoreError, StoreUnavailable
from controlplane.store.base import Store

log = logging.getLogger(__name__)

STATE = "alert_state"
NFLOG = "alert_nflog"
SILENCES = "alert_silences"
DELIVERIES = "alert_deliveries"
MAX_BUFFERED_EVENTS = 100_000

_STATE_COLS = [
    "fingerprint", "version", "updated_at", "state", "labels", "annotations", "generator_url",
    "value", "active_at", "fired_at", "resolved_at", "last_active_at", "last_eval_at",
    "for_s", "keep_firing_for_s",
]  # fmt: skip
_NFLOG_COLS = [
    "receiver", "group_key", "version", "sent_at", "firing", "resolved", "payload_hash",
    "delivery_id",
]  # fmt: skip
_SILENCE_COLS = [
    "id", "version", "matchers", "starts_at", "ends_at", "created_by", "comment", "updated_at",
]  # fmt: skip
_DELIVERY_COLS = [
    "id", "version", "receiver", "kind", "group_key", "url", "body", "fingerprints", "status",
    "attempts", "created_at", "next_attempt_at", "updated_at", "last_error", "last_status",
]  # fmt: skip
_COLUMNS = {STATE: _STATE_COLS, NFLOG: _NFLOG_COLS, SILENCES: _SILENCE_COLS,
            DELIVERIES: _DELIVERY_COLS}  # fmt: skip
_EVENT_COLS = [
    "ts", "fingerprint", "alertname", "state", "severity", "slo", "pool", "labels",
    "annotations", "starts_at", "ends_at", "value",
]  # fmt: skip


def _dt(ts: float) -> datetime:
    # Rows carry datetimes, not epoch floats: unambiguous for every driver's conversion.
    return datetime.fromtimestamp(ts, tz=UTC)


def _dtn(ts: float | None) -> datetime | None:
    return None if ts is None else _dt(ts)


def _ts(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.timestamp()
    return float(v)


def _latest(table: str, key: str, where: str = "") -> str:
    # Newest version per key without FINAL: cheap on these small tables.
    return f"SELECT * FROM {table} {where} ORDER BY {key}, version DESC LIMIT 1 BY {key}"


class AlertStorage:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._keyed: dict[tuple[str, str], list[Any]] = {}
        self._events: list[list[Any]] = []
        self._version = 0
        self.dropped_events = 0

    # -- versions ------------------------------------------------------------------------
    def _next_version(self, now: float) -> int:
        self._version = max(self._version + 1, int(now * 1e6))
        return self._version

    def _seen_version(self, v: int) -> None:
        self._version = max(self._version, int(v))

    # -- reads (at start) ---------------------------------------------------------------
    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            rows = self._store.query(sql, params).dicts()
        except StoreError as exc:
            raise StateStoreError(f"cannot read alerting state: {exc}") from exc
        for r in rows:
            self._seen_version(r.get("version", 0))
        return rows

    def load_alerts(self) -> list[Alert]:
        out = []
        for r in self._query(_latest(STATE, "fingerprint")):
            if r["state"] == "inactive":
                continue
            out.append(Alert(
                fingerprint=r["fingerprint"], labels=json.loads(r["labels"]),
                annotations=json.loads(r["annotations"]), generator_url=r["generator_url"],
                state=r["state"], value=r["value"], active_at=_ts(r["active_at"]),
                fired_at=_ts(r["fired_at"]), resolved_at=_ts(r["resolved_at"]),
                last_active_at=_ts(r["last_active_at"]), last_eval_at=_ts(r["last_eval_at"]) or 0,
                for_s=r["for_s"], keep_firing_for_s=r["keep_firing_for_s"],
            ))  # fmt: skip
        return out

    def load_nflog(self, since: float) -> list[NflogEntry]:
        rows = self._query(_latest(NFLOG, "receiver, group_key"))
        return [
            NflogEntry(
                receiver=r["receiver"],
                group_key=r["group_key"],
                sent_at=_ts(r["sent_at"]) or 0,
                firing=frozenset(json.loads(r["firing"])),
                resolved=frozenset(json.loads(r["resolved"])),
                payload_hash=r["payload_hash"],
                delivery_id=r["delivery_id"],
            )
            for r in rows
            if (_ts(r["sent_at"]) or 0) >= since
        ]

    def load_silences(self) -> list[Silence]:
        return [
            Silence(
                id=r["id"],
                matchers=tuple(Matcher(**m) for m in json.loads(r["matchers"])),
                starts_at=_ts(r["starts_at"]) or 0,
                ends_at=_ts(r["ends_at"]) or 0,
                created_by=r["created_by"],
                comment=r["comment"],
                updated_at=_ts(r["updated_at"]) or 0,
            )
            for r in self._query(_latest(SILENCES, "id"))
        ]

    def load_deliveries(self, *, since: float) -> list[Delivery]:
        """Open and dead deliveries, and any other updated since ``since``."""
        sql = (
            f"SELECT * FROM ({_latest(DELIVERIES, 'id')}) WHERE status IN "
            "('pending', 'retrying', 'dead') OR updated_at >= {since:DateTime64(3)}"
        )
        return [_delivery(r) for r in self._query(sql, {"since": _dt(since)})]

    # -- writes (buffered) --------------------------------------------------------------
    def save_alert(self, a: Alert, now: float, *, tombstone: bool = False) -> None:
        row = [
            a.fingerprint, self._next_version(now), _dt(now), "inactive" if tombstone else a.state,
            json.dumps(a.labels, sort_keys=True), json.dumps(a.annotations, sort_keys=True),
            a.generator_url, a.value, _dtn(a.active_at), _dtn(a.fired_at), _dtn(a.resolved_at),
            _dtn(a.last_active_at), _dt(a.last_eval_at), a.for_s, a.keep_firing_for_s,
        ]  # fmt: skip
        with self._lock:
            self._keyed[(STATE, a.fingerprint)] = row

    def save_event(self, a: Alert, now: float) -> None:
        labels = a.labels
        row = [
            _dt(now), a.fingerprint, labels.get("alertname", ""), a.state,
            labels.get("severity", ""),
            labels.get("slo", ""), labels.get("pool", ""), labels, a.annotations,
            _dt(a.starts_at() or now), _dtn(a.ends_at()), a.value,
        ]  # fmt: skip
        with self._lock:
            if len(self._events) >= MAX_BUFFERED_EVENTS:
                self._events.pop(0)
                self.dropped_events += 1
            self._events.append(row)

    def save_nflog(self, e: NflogEntry, now: float) -> None:
        row = [
            e.receiver, e.group_key, self._next_version(now), _dt(e.sent_at),
            json.dumps(sorted(e.firing)), json.dumps(sorted(e.resolved)), e.payload_hash,
            e.delivery_id,
        ]  # fmt: skip
        with self._lock:
            self._keyed[(NFLOG, e.receiver + "\x00" + e.group_key)] = row

    def save_silence(self, s: Silence, now: float) -> None:
        row = [
            s.id, self._next_version(now), json.dumps([
                {"name": m.name, "value": m.value, "is_regex": m.is_regex,
                 "is_equal": m.is_equal} for m in s.matchers
            ]),
            _dt(s.starts_at), _dt(s.ends_at), s.created_by, s.comment, _dt(s.updated_at),
        ]  # fmt: skip
        with self._lock:
            self._keyed[(SILENCES, s.id)] = row

    def save_delivery(self, d: Delivery, now: float) -> None:
        row = [
            d.id, self._next_version(now), d.receiver, d.kind, d.group_key, d.url, d.body,
            json.dumps(list(d.fingerprints)), d.status, d.attempts, _dt(d.created_at),
            _dt(d.next_attempt_at), _dt(d.updated_at), d.last_error[:2000], d.last_status,
        ]  # fmt: skip
        with self._lock:
            self._keyed[(DELIVERIES, d.id)] = row

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._keyed) + len(self._events)

    def flush(self) -> bool:
        """Write everything buffered; on a store error keep it for the next call."""
        # One flush at a time: two concurrent ones would write events twice and then each
        # drop rows the other had not written.
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            keyed, events = dict(self._keyed), list(self._events)
        by_table: dict[str, list[tuple[tuple[str, str], list[Any]]]] = {}
        for key, row in keyed.items():
            by_table.setdefault(key[0], []).append((key, row))
        ok = True
        for table, items in by_table.items():
            written = self._insert(table, _COLUMNS[table], [row for _, row in items])
            if written is None:
                return False
            ok = ok and written
            with self._lock:
                for key, row in items:
                    if self._keyed.get(key) is row:  # not rewritten meanwhile
                        del self._keyed[key]
        if events:
            written = self._insert(cv.ALERT_EVENTS, _EVENT_COLS, events)
            if written is None:
                return False
            ok = ok and written
            with self._lock:
                del self._events[: len(events)]
        return ok

    def _insert(self, table: str, cols: list[str], rows: list[list[Any]]) -> bool | None:
        """True when written, False when the store rejected (and we dropped) the rows,
        None when the store is unavailable (rows kept for the next flush)."""
        try:
            self._store.insert_rows(table, cols, rows)
        except StoreUnavailable as exc:
            log.warning("alert state not written yet, kept for retry: %s", exc)
            return None
        except StoreError as exc:
            # Rejected rows would block every later write if retried; a keyed row is
            # superseded by its next version anyway.
            log.error("dropping %d %s rows the store rejected: %s", len(rows), table, exc)
            return False
        return True


def _delivery(r: dict[str, Any]) -> Delivery:
    return Delivery(
        id=r["id"], receiver=r["receiver"], kind=r["kind"], group_key=r["group_key"],
        url=r["url"], body=r["body"], fingerprints=tuple(json.loads(r["fingerprints"])),
        status=r["status"], attempts=int(r["attempts"]), created_at=_ts(r["created_at"]) or 0,
        next_attempt_at=_ts(r["next_attempt_at"]) or 0, updated_at=_ts(r["updated_at"]) or 0,
        last_error=r["last_error"], last_status=int(r["last_status"]),
    )  # fmt: skip
