"""Collector fixtures: one migrated database per test module, emptied for each test, and
writers on the manual clock that the test stops at the end.

Migrating is the slow part of a fresh store; the writer tests only need empty tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from collector.writer import Writer
from controlplane import conventions as cv
from controlplane.clock import ManualClock
from controlplane.store.chdb_driver import ChdbStore
from tests.support.stores import migrated_store
from tests.support.writer import retryable


@pytest.fixture(scope="module")
def _module_db(chdb_path: Path) -> Iterator[ChdbStore]:
    with migrated_store(chdb_path) as s:
        yield s


@pytest.fixture
def store(_module_db: ChdbStore) -> ChdbStore:
    """The module's migrated database with every data table emptied."""
    tables = _module_db.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine LIKE '%MergeTree' AND name != {m:String}",
        {"m": cv.SCHEMA_MIGRATIONS},
    ).rows
    for (name,) in tables:
        _module_db.command(f"TRUNCATE TABLE {name}")
    return _module_db


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_writer(clock: ManualClock, registry: CollectorRegistry) -> Iterator[Any]:
    """Writers on the manual clock that flush by size only (unless told otherwise)."""
    made: list[Writer] = []

    def make(target: Any, **kw: Any) -> Writer:
        kw.setdefault("clock", clock)
        kw.setdefault("registry", registry)
        kw.setdefault("is_retryable", retryable)
        kw.setdefault("flush_interval_s", 3600.0)
        kw.setdefault("idle_wait_s", 0.02)
        w = Writer(target, **kw)
        w.start()
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop(timeout=5)
