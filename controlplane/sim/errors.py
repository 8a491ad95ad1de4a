"""Errors of the simulator, traffic generation and backtests.

GovernorError
└── SimError
    ├── TraceFormatError   a trace file line is not in the Azure CSV format
    ├── ProfileError       a traffic profile file is missing or malformed
    └── BacktestError      a backtest cannot run as configured
"""

from __future__ import annotations

from controlplane.errors import GovernorError


class SimError(GovernorError):
    """Base of the simulator's errors."""


class TraceFormatError(SimError, ValueError):
    """A trace file does not follow ``TIMESTAMP,ContextTokens,GeneratedTokens``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


class ProfileError(SimError, ValueError):
    """A traffic profile is missing, malformed or names an unknown kind."""


class BacktestError(SimError):
    """A backtest cannot run as configured."""
