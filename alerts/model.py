"""Alert instances, fingerprints and the time format Alertmanager puts on the wire."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
INACTIVE = "inactive"  # tombstone: the alert is gone (pending that cleared, resolve retired)

# prometheus/common model: FNV-1a 64 over sorted "name\xffvalue\xff".
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEP = 0xFF
_MASK = (1 << 64) - 1


def fingerprint(labels: Mapping[str, str]) -> str:
    """The label set's fingerprint exactly as Prometheus and Alertmanager compute it."""
    return _fingerprint(tuple(sorted(labels.items())))


@lru_cache(maxsize=65536)  # the same label sets come back every evaluation
def _fingerprint(items: tuple[tuple[str, str], ...]) -> str:
    h = _FNV_OFFSET
    for name, value in items:
        for part in (name, value):
            for b in part.encode():
                h = ((h ^ b) * _FNV_PRIME) & _MASK
            h = ((h ^ _SEP) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


def rfc3339(ts: float | None) -> str:
    """Go's RFC3339Nano in UTC (trailing fractional zeros dropped); None is Go's zero time."""
    if ts is None:
        return "0001-01-01T00:00:00Z"
    dt = datetime.fromtimestamp(round(ts, 6), tz=UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def label_string(labels: Mapping[str, str]) -> str:
    """``{a="1", b="2"}`` as Prometheus prints a label set (sorted, Go-quoted values)."""
    inner = ", ".join(f"{k}={json.dumps(labels[k])}" for k in sorted(labels))
    return "{" + inner + "}"


@dataclass
class Alert:
    """One alert instance (one label set) and where it is in its lifecycle."""

    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    generator_url: str = ""
    state: str = PENDING
    value: float | None = None
    active_at: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    last_active_at: float | None = None
    last_eval_at: float = 0.0
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    # When the last evaluation set it: endsAt of a firing alert is computed from it.
    valid_until: float | None = None

    def starts_at(self) -> float | None:
        # Prometheus sends FiredAt as startsAt (pending time is not part of the alert).
        return self.fired_at if self.fired_at is not None else self.active_at

    def ends_at(self) -> float | None:
        return self.resolved_at if self.state == RESOLVED else self.valid_until

    def as_dict(self) -> dict[str, object]:
        return {
            "fingerprint": self.fingerprint,
            "state": self.state,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "value": self.value,
            "activeAt": rfc3339(self.active_at) if self.active_at is not None else None,
            "startsAt": rfc3339(self.starts_at()),
            "endsAt": rfc3339(self.ends_at()),
            "generatorURL": self.generator_url,
        }
