"""Shared fixtures.

chDB runs one embedded server per process and data directory, so the whole test run
shares one directory and every test gets a fresh *database* in it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.clock import ManualClock
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import migrate

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store(chdb_path: Path) -> Iterator[ChdbStore]:
    """A migrated embedded store in a database of its own."""
    s = ChdbStore(chdb_path, database=f"t_{uuid.uuid4().hex[:12]}")
    migrate(s)
    try:
        yield s
    finally:
        s.command(f"DROP DATABASE IF EXISTS {s.database}")
        s.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def require_binary(name: str, package: str) -> str:
    """Path of a system binary, or skip naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install the Debian package {package!r}")
    return path


def trace_file(name: str) -> Path:
    p = TRACES / name
    if not p.exists():
        pytest.skip(f"trace {p} not present (expected in ../shared/traces)")
    return p


os.environ.setdefault("GOVERNOR_TEST", "1")
