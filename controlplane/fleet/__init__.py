"""Fleets Governor acts on: the ``Fleet`` protocol and its implementations."""

from __future__ import annotations

from controlplane.fleet.base import (
    AdmissionLimit,
    Fleet,
    FleetError,
    Replica,
    ReplicaState,
    UnknownReplica,
)

__all__ = [
    "AdmissionLimit",
    "Fleet",
    "FleetError",
    "Replica",
    "ReplicaState",
    "UnknownReplica",
]
