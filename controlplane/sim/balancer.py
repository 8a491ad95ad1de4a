"""Least-outstanding-requests balancing with drain, for the router.

A backend is ``serving`` (gets new requests), ``draining`` (keeps its in-flight requests,
gets no new ones) or ``drained`` (draining and nothing left in flight). Picking is
constant work per backend under a lock held only for the pick itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from controlplane.sim.errors import SimError

SERVING = "serving"
DRAINING = "draining"
DRAINED = "drained"


class UnknownBackend(SimError, KeyError):
    """No backend has this name."""

    def __str__(self) -> str:
        return f"no replica named {self.args[0]!r} is registered with the router"


@dataclass
class Backend:
    name: str
    url: str
    state: str = SERVING
    outstanding: int = 0
    served: int = 0
    last_pick: int = 0
    drained: threading.Event = field(default_factory=threading.Event)

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.url,
            "state": self.state,
            "outstanding": self.outstanding,
            "served": self.served,
        }


class Balancer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backends: dict[str, Backend] = {}
        self._picks = 0

    def add(self, name: str, url: str) -> Backend:
        """Register (or re-register with a new URL) a backend; it serves at once."""
        with self._lock:
            b = self._backends.get(name)
            if b is None:
                b = self._backends[name] = Backend(name, url.rstrip("/"))
            else:
                b.url = url.rstrip("/")
                b.state = SERVING
                b.drained.clear()
            return b

    def remove(self, name: str) -> Backend:
        with self._lock:
            b = self._backends.pop(name, None)
        if b is None:
            raise UnknownBackend(name)
        return b

    def get(self, name: str) -> Backend:
        with self._lock:
            b = self._backends.get(name)
        if b is None:
            raise UnknownBackend(name)
        return b

    def list(self) -> list[dict[str, object]]:
        with self._lock:
            return [b.snapshot() for b in sorted(self._backends.values(), key=lambda b: b.name)]

    def acquire(self, exclude: frozenset[str] = frozenset()) -> Backend | None:
        """The serving backend with the fewest requests in flight (ties: least recently
        picked), counted as one more in flight; None when nothing serves."""
        with self._lock:
            best: Backend | None = None
            for b in self._backends.values():
                if b.state != SERVING or b.name in exclude:
                    continue
                if best is None or (b.outstanding, b.last_pick) < (
                    best.outstanding,
                    best.last_pick,
                ):
                    best = b
            if best is not None:
                self._picks += 1
                best.last_pick = self._picks
                best.outstanding += 1
            return best

    def release(self, backend: Backend) -> None:
        with self._lock:
            backend.outstanding -= 1
            backend.served += 1
            if backend.state == DRAINING and backend.outstanding == 0:
                backend.state = DRAINED
                backend.drained.set()

    def drain(self, name: str) -> Backend:
        """Stop sending new requests to ``name``; it becomes ``drained`` when idle."""
        with self._lock:
            b = self._backends.get(name)
            if b is None:
                raise UnknownBackend(name)
            if b.state == SERVING:
                b.state = DRAINING
            if b.state == DRAINING and b.outstanding == 0:
                b.state = DRAINED
                b.drained.set()
            return b

    def undrain(self, name: str) -> Backend:
        with self._lock:
            b = self._backends.get(name)
            if b is None:
                raise UnknownBackend(name)
            b.state = SERVING
            b.drained.clear()
            return b

    def outstanding(self) -> dict[str, int]:
        with self._lock:
            return {b.name: b.outstanding for b in self._backends.values()}
