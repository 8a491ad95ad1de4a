"""Store fixtures: the chDB HTTP front (a subprocess) and a ClickHouseStore on it.

The front runs once per test session with its own chDB data directory; each test gets a
fresh database in it, as the ``store`` fixture does for the embedded driver.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.store.base import Store
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.clickhouse_driver import ClickHouseStore
from controlplane.store.migrate import migrate
from tests.support.front import FrontProcess


@pytest.fixture(scope="session")
def chdb_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontProcess]:
    with FrontProcess(tmp_path_factory.mktemp("chdb-front")) as front:
        yield front


@pytest.fixture
def ch_store(chdb_front: FrontProcess) -> Iterator[ClickHouseStore]:
    """A migrated ClickHouseStore on the front, in a database of its own."""
    s = ClickHouseStore(chdb_front.url, database=f"t_{uuid.uuid4().hex[:12]}")
    migrate(s)
    try:
        yield s
    finally:
        s.command(f"DROP DATABASE IF EXISTS {s.database}")
        s.close()


@pytest.fixture(params=["chdb", "clickhouse"])
def any_store(request: pytest.FixtureRequest) -> Store:
    """Each driver in turn, migrated, in a fresh database."""
    name = "store" if request.param == "chdb" else "ch_store"
    s: Store = request.getfixturevalue(name)
    return s


@pytest.fixture(scope="module", params=["chdb", "clickhouse"])
def shared_store(
    request: pytest.FixtureRequest, chdb_path: Path, chdb_front: FrontProcess
) -> Iterator[Store]:
    """Each driver, one migrated database per test module: for tests that write nothing
    (or only rows they also check), so the suite is not dominated by migrations."""
    db = f"m_{uuid.uuid4().hex[:12]}"
    s: Store
    if request.param == "chdb":
        s = ChdbStore(chdb_path, database=db)
    else:
        s = ClickHouseStore(chdb_front.url, database=db)
    migrate(s)
    try:
        yield s
    finally:
        s.command(f"DROP DATABASE IF EXISTS {s.database}")
        s.close()
