"""Fixtures of the alerting tests.

Migrating a fresh database costs seconds, so these tests share one migrated database
and empty the alerting tables before each test instead (``store`` is overridden here).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.store.chdb_driver import ChdbStore
from tests.alerts.harness import Recorder
from tests.support.stores import migrated_store

TABLES = ("alert_state", "alert_nflog", "alert_silences", "alert_deliveries", "alert_events")


@pytest.fixture(scope="package")
def _alerts_db(chdb_path: Path) -> Iterator[ChdbStore]:
    with migrated_store(chdb_path, "ta") as s:
        yield s


@pytest.fixture
def store(_alerts_db: ChdbStore) -> ChdbStore:
    for t in TABLES:
        _alerts_db.command(f"TRUNCATE TABLE IF EXISTS {t}")
    return _alerts_db


@pytest.fixture
def recorder(clock) -> Iterator[Recorder]:  # type: ignore[no-untyped-def]
    r = Recorder(clock)
    try:
        yield r
    finally:
        r.close()
