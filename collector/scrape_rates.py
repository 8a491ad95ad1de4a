"""Counters into per-second rates between two scrapes, with counter resets handled.

A rate is computed per series (one label set) and then summed, as Prometheus's
``sum(rate(...))`` does: a reset in one series (an engine restarting) must not make the
sum go negative or hide the others' growth. After a reset the new value is the increase
since the restart, which is what Prometheus assumes too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from collector.scrape_parse import Series

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]  # (target, sample name, labels)


def _labels_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


class CounterRates:
    """Remembers the last value of every counter series per target; thread-safe."""

    def __init__(self) -> None:
        self._last: dict[SeriesKey, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def increase(
        self, target: str, name: str, series: Iterable[Series], now: float
    ) -> tuple[float | None, float | None]:
        """Total increase over all series since the previous call, and the seconds it spans.

        Returns ``(None, None)`` on the first observation of every series (no baseline yet).
        """
        total = 0.0
        span: float | None = None
        seen = False
        with self._lock:
            for s in series:
                key = (target, name, _labels_key(s.labels))
                prev = self._last.get(key)
                self._last[key] = (now, s.value)
                if prev is None:
                    continue
                t0, v0 = prev
                dt = now - t0
                if dt <= 0:
                    continue
                total += s.value if s.value < v0 else s.value - v0
                span = dt if span is None else max(span, dt)
                seen = True
        return (total, span) if seen else (None, None)

    def rate(self, target: str, name: str, series: Iterable[Series], now: float) -> float | None:
        inc, span = self.increase(target, name, series, now)
        if inc is None or not span:
            return None
        return inc / span

    def forget(self, target: str) -> None:
        """Drop a target's baselines (it was removed from discovery)."""
        with self._lock:
            for key in [k for k in self._last if k[0] == target]:
                del self._last[key]
