"""Scaling and admission policies, chosen by name; see ``base.py``."""

from __future__ import annotations

from controlplane.policy.base import (
    Decision,
    Policy,
    PolicyError,
    PoolSignals,
    SignalSource,
    UnknownPolicy,
    create_policy,
    policy_names,
    register_policy,
)
from controlplane.policy.runner import Action, PolicyLoop, direction_changes

__all__ = [
    "Action",
    "Decision",
    "Policy",
    "PolicyError",
    "PolicyLoop",
    "PoolSignals",
    "SignalSource",
    "UnknownPolicy",
    "create_policy",
    "direction_changes",
    "policy_names",
    "register_policy",
]
