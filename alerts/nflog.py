"""The notification log: what was last notified to which receiver for which group.

Alertmanager's dedup stage reads it to decide whether a group needs a new notification;
it is persisted, so a restarted Governor does not page again for alerts already sent.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

# Alertmanager keeps notification log entries for 120 h.
RETENTION_S = 120 * 3600.0


@dataclass(frozen=True)
class NflogEntry:
    receiver: str
    group_key: str
    sent_at: float
    firing: frozenset[str]
    resolved: frozenset[str]
    payload_hash: str = ""
    delivery_id: str = ""


def needs_update(
    entry: NflogEntry | None,
    firing: Set[str],
    resolved: Set[str],
    *,
    send_resolved: bool,
    repeat_interval_s: float,
    now: float,
) -> bool:
    """Alertmanager's ``DedupStage.needsUpdate``, rule for rule."""
    if entry is None:
        # Never notified: only firing alerts are news.
        return len(firing) > 0
    if not firing <= entry.firing:
        return True  # a new firing alert
    if not firing:
        # Everything resolved: notify (whatever send_resolved says) so the log forgets the
        # firing set, unless the receiver never heard of any of them.
        return len(entry.firing) > 0
    if send_resolved and not resolved <= entry.resolved:
        return True
    return entry.sent_at <= now - repeat_interval_s


class NotificationLog:
    def __init__(self, entries: list[NflogEntry] | None = None) -> None:
        self._entries = {(e.receiver, e.group_key): e for e in entries or []}

    def get(self, receiver: str, group_key: str) -> NflogEntry | None:
        return self._entries.get((receiver, group_key))

    def log(self, entry: NflogEntry) -> None:
        self._entries[(entry.receiver, entry.group_key)] = entry

    def gc(self, now: float) -> None:
        for k in [k for k, e in self._entries.items() if e.sent_at < now - RETENTION_S]:
            del self._entries[k]
