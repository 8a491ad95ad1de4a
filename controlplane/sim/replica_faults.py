"""Faults a simulated replica can be told to have (``POST /admin/fault``).

* ``xid``: the GPU reports an XID error (``DCGM_FI_DEV_XID_ERRORS`` shows the code),
  requests in flight fail and new ones get 500 until cleared. Default code 79 ("GPU has
  fallen off the bus").
* ``thermal``: thermal slowdown: steps take ``multiplier`` times longer (default 1.5),
  clocks drop and temperature rises in the GPU metrics.
* ``hang``: the engine accepts requests but never steps; ``/health`` still answers 200,
  as a wedged engine often does.
* ``crash``: the process exits at once (connections reset).
* ``slow``: a slow replica: steps take ``multiplier`` times longer (default 3).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.sim.errors import SimError

KINDS = ("xid", "thermal", "hang", "crash", "slow")
DEFAULT_XID = 79
DEFAULT_THERMAL_MULTIPLIER = 1.5
DEFAULT_SLOW_MULTIPLIER = 3.0


class FaultError(SimError, ValueError):
    """A fault request names an unknown kind or carries bad parameters."""


@dataclass(frozen=True)
class Fault:
    kind: str
    xid: int = 0
    multiplier: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "xid":
            out["xid"] = self.xid
        if self.kind in ("thermal", "slow"):
            out["multiplier"] = self.multiplier
        return out


def parse_fault(body: Any) -> Fault:
    if not isinstance(body, Mapping):
        raise FaultError('body must be an object like {"kind": "slow", "multiplier": 3}')
    kind = body.get("kind")
    if kind not in KINDS:
        raise FaultError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    nested = body.get("params")
    params: Mapping[str, Any] = nested if isinstance(nested, Mapping) else body
    unknown = sorted(set(params) - {"kind", "params", "xid", "multiplier"})
    if unknown:
        raise FaultError(f"unknown fault parameters: {', '.join(unknown)}")
    if kind == "xid":
        xid = params.get("xid", DEFAULT_XID)
        if isinstance(xid, bool) or not isinstance(xid, int) or xid <= 0:
            raise FaultError(f"xid must be a positive integer (got {xid!r})")
        return Fault("xid", xid=xid)
    if kind in ("thermal", "slow"):
        default = DEFAULT_THERMAL_MULTIPLIER if kind == "thermal" else DEFAULT_SLOW_MULTIPLIER
        mult = params.get("multiplier", default)
        if isinstance(mult, bool) or not isinstance(mult, int | float) or mult < 1:
            raise FaultError(f"multiplier must be a number >= 1 (got {mult!r})")
        return Fault(kind, multiplier=float(mult))
    return Fault(kind)


class Faults:
    """The active faults of one replica (several kinds may be active at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, Fault] = {}
        self.version = 0  # bumped on every change, so telemetry can refresh at once

    def set(self, fault: Fault) -> None:
        with self._lock:
            self._active[fault.kind] = fault
            self.version += 1

    def clear(self, kind: str | None = None) -> None:
        if kind is not None and kind not in KINDS:
            raise FaultError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
        with self._lock:
            if kind is None:
                self._active.clear()
            else:
                self._active.pop(kind, None)
            self.version += 1

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._active.values())

    def get(self, kind: str) -> Fault | None:
        with self._lock:
            return self._active.get(kind)

    def has(self, kind: str) -> bool:
        with self._lock:
            return kind in self._active

    @property
    def xid(self) -> int:
        with self._lock:
            f = self._active.get("xid")
        return f.xid if f else 0

    @property
    def slowdown(self) -> float:
        """Step-time multiplier from thermal and slow faults together."""
        with self._lock:
            out = 1.0
            for kind in ("thermal", "slow"):
                f = self._active.get(kind)
                if f is not None:
                    out *= f.multiplier
            return out
