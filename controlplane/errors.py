"""Exceptions of the control plane.

    GovernorError
    ├── ConfigError              config or spec file invalid (carries every problem found)
    ├── StoreError               anything the store could not do
    │   ├── StoreUnavailable     cannot reach / open the store (retryable)
    │   ├── StoreLocked          another process holds the embedded data directory
    │   ├── SchemaTooNew         the store was migrated by a newer Governor
    │   └── QueryError           the engine rejected a statement (not retryable)
    └── AuthError                missing or insufficient API credentials

Adapters translate third-party exceptions (chdb, clickhouse_connect) into these with
``raise ... from exc`` so callers never see driver types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class GovernorError(Exception):
    """Base of every error Governor raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (file and dotted field path) and what was expected."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"


class ConfigError(GovernorError, ValueError):
    """A config or spec file is invalid; ``problems`` lists every problem, not only the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StoreError(GovernorError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or opened right now; the caller may retry later."""


class StoreLocked(StoreError):
    """Another process holds the embedded store's data directory."""


class SchemaTooNew(StoreError):
    """The store's schema version is newer than this code knows."""


class QueryError(StoreError):
    """The engine rejected a statement; retrying the same statement will not help."""


class AuthError(GovernorError):
    """Missing, unknown or insufficient API token."""
