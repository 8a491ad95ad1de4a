"""Governor control plane: store, SLO engine, policy, fleet actuators, API and CLI."""

__version__ = "0.1.0"
