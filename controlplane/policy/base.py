"""The ``Policy`` protocol, the signals a policy sees, its decisions, and the registry.

A policy is a small object with a ``decide(signals) -> Decision`` method, called every
``interval_s`` by ``PolicyLoop`` on an injected clock. It never touches a fleet, a store or
the time itself: the loop gathers ``PoolSignals`` from a ``SignalSource`` (the store live,
the simulator in a backtest) and applies the decision to a ``Fleet``. So the code that
decides in a backtest is the code that decides live.

Policies register by name, from any module of this package (imported on first lookup)::

    @register_policy("static")
    def _static(**options: Any) -> Policy: ...

    policy = create_policy("static", replicas=3)
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.errors import GovernorError
from controlplane.fleet.base import AdmissionLimit, Replica


class PolicyError(GovernorError):
    """A policy cannot be created or run as configured."""


class UnknownPolicy(PolicyError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown policy {name!r}; known: {', '.join(known) or 'none'}")


@dataclass(frozen=True)
class PoolSignals:
    """One pool over the last ``window_s`` seconds ending at ``now`` (epoch seconds).

    Latencies are in seconds and ``None`` when no request completed in the window.
    ``waiting``/``running``/``kv_usage`` are the current engine state summed (kv: mean)
    over serving replicas.
    """

    pool: str
    now: float
    window_s: float
    replicas: tuple[Replica, ...]
    arrival_rps: float = 0.0
    completed: int = 0
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p95_s: float | None = None
    ttft_attainment: float | None = None  # share of completed requests within the TTFT SLO
    ttft_slo_s: float | None = None
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    input_tokens_per_s: float = 0.0
    output_tokens_per_s: float = 0.0

    @property
    def active_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.active)


@dataclass(frozen=True)
class Decision:
    """``target_replicas`` None leaves the count alone; ``admission_limits`` None leaves
    the limits alone (an empty tuple removes them)."""

    target_replicas: int | None = None
    admission_limits: tuple[AdmissionLimit, ...] | None = None
    reason: str = ""


class Policy(Protocol):
    name: str
    interval_s: float  # how often the loop calls decide
    window_s: float  # how far back the signals look

    def decide(self, signals: PoolSignals) -> Decision: ...


class SignalSource(Protocol):
    def signals(self, pool: str, now: float, window_s: float) -> PoolSignals: ...


PolicyFactory = Callable[..., Policy]
_REGISTRY: dict[str, PolicyFactory] = {}


def register_policy(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    def deco(factory: PolicyFactory) -> PolicyFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise PolicyError(f"policy {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_policy(name: str, **options: Any) -> Policy:
    """Build a registered policy; bad options raise ``PolicyError`` naming them."""
    _load_builtin()
    factory = _REGISTRY.get(name)
    if factory is None:
        raise UnknownPolicy(name, sorted(_REGISTRY))
    try:
        return factory(**options)
    except TypeError as exc:
        raise PolicyError(f"policy {name!r}: bad options {sorted(options)}: {exc}") from exc


_SKIP = {"base", "runner"}


def _load_builtin() -> None:
    """Import every module of this package so its ``@register_policy`` runs: a new policy
    is a new module here, with no registry edits (like CLI commands)."""
    import controlplane.policy as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _SKIP and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
