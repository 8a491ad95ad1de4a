"""Aggregation groups: Alertmanager's dispatcher, driven by an explicit clock.

An alert joins one group per matching route (keyed by the route and its ``group_by``
label values). A new group flushes after ``group_wait``, then every ``group_interval``.
A flush drops silenced alerts, asks the notification log whether anything is news
(``needs_update``) and, if so, emits a notification. Resolved alerts leave the group once
flushed; an empty group is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from alerts.model import RESOLVED, Alert
from alerts.nflog import NotificationLog, needs_update
from alerts.routing import Route


@dataclass
class Group:
    route: Route
    key: str
    labels: dict[str, str]
    next_flush_at: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    has_flushed: bool = False


@dataclass(frozen=True)
class Flush:
    """The outcome of one group flush that needs a notification."""

    route: Route
    group_key: str
    group_labels: dict[str, str]
    alerts: tuple[Alert, ...]  # firing and resolved, silenced ones removed
    firing: frozenset[str]
    resolved: frozenset[str]


class Dispatcher:
    def __init__(self, nflog: NotificationLog, send_resolved: Mapping[str, bool]) -> None:
        self._nflog = nflog
        self._send_resolved = send_resolved
        self.groups: dict[tuple[int, str], Group] = {}

    def insert(self, route: Route, alert: Alert, now: float) -> None:
        gk = route.group_key(alert.labels)
        g = self.groups.get((route.index, gk))
        if g is None:
            g = Group(route, gk, route.group_labels(alert.labels), now + route.group_wait_s)
            self.groups[(route.index, gk)] = g
        # Held by reference: the engine replaces an Alert on change, never mutates it.
        g.alerts[alert.fingerprint] = alert
        # Alertmanager: an alert that started longer than group_wait ago (e.g. across a
        # restart) does not wait again before the group's first flush.
        start = alert.starts_at()
        if not g.has_flushed and start is not None and start + route.group_wait_s <= now:
            g.next_flush_at = min(g.next_flush_at, now)

    def next_due(self) -> float | None:
        return min((g.next_flush_at for g in self.groups.values()), default=None)

    def flush_due(self, now: float, silenced: Callable[[Alert], bool]) -> list[Flush]:
        out = []
        for gid, g in sorted(self.groups.items(), key=lambda kv: kv[1].next_flush_at):
            if g.next_flush_at > now:
                continue
            flush = self._flush(g, now, silenced)
            if flush is not None:
                out.append(flush)
            g.has_flushed = True
            g.next_flush_at = now + g.route.group_interval_s
            for fp in [fp for fp, a in g.alerts.items() if a.state == RESOLVED]:
                del g.alerts[fp]
            if not g.alerts:
                del self.groups[gid]
        return out

    def _flush(self, g: Group, now: float, silenced: Callable[[Alert], bool]) -> Flush | None:
        shown = [a for a in g.alerts.values() if not silenced(a)]
        if not shown:
            # Alertmanager's pipeline stops at the mute stage: the log is left as it was.
            return None
        firing = frozenset(a.fingerprint for a in shown if a.state != RESOLVED)
        resolved = frozenset(a.fingerprint for a in shown if a.state == RESOLVED)
        receiver = g.route.receiver
        entry = self._nflog.get(receiver, g.key)
        send_resolved = self._send_resolved.get(receiver, True)
        if not needs_update(
            entry, firing, resolved, send_resolved=send_resolved,
            repeat_interval_s=g.route.repeat_interval_s, now=now,
        ):  # fmt: skip
            return None
        if not send_resolved:
            shown = [a for a in shown if a.state != RESOLVED]
        shown.sort(key=lambda a: sorted(a.labels.items()))
        return Flush(g.route, g.key, dict(g.labels), tuple(shown), firing, resolved)
