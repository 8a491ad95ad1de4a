"""Errors of the SLO engine.

GovernorError
├── ConfigError
│   └── SpecError        an SLO file is invalid (every problem, with file and field path)
└── SloError             an SLO could not be evaluated (unknown name, ...)
"""

from __future__ import annotations

from controlplane.errors import ConfigError, GovernorError


class SpecError(ConfigError):
    """An SLO spec (Governor YAML or OpenSLO) is invalid; ``problems`` lists them all."""


class SloError(GovernorError):
    """An SLO operation failed for a reason other than an invalid spec."""


class UnknownSlo(SloError, KeyError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown SLO {name!r}")

    def __str__(self) -> str:
        return f"unknown SLO {self.name!r}"
