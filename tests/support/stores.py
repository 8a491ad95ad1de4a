"""Embedded stores for tests: each in a database of its own, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import migrate


@contextmanager
def migrated_store(path: Path, prefix: str = "t") -> Iterator[ChdbStore]:
    """A migrated embedded store in a fresh database under ``path``."""
    s = ChdbStore(path, database=f"{prefix}_{uuid.uuid4().hex[:12]}")
    try:
        migrate(s)
        yield s
    finally:
        s.command(f"DROP DATABASE IF EXISTS {s.database}")
        s.close()
