"""Apply versioned migrations (``controlplane/store/migrations/mNNNN_*.py``) in order."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane import conventions as cv
from controlplane.errors import QueryError, SchemaTooNew
from controlplane.store import migrations as _pkg
from controlplane.store.base import Store

log = logging.getLogger(__name__)
_NAME = re.compile(r"^m(\d{4})_(\w+)$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def known_migrations() -> list[Migration]:
    found = []
    for info in pkgutil.iter_modules(_pkg.__path__):
        m = _NAME.match(info.name)
        if not m:
            continue
        mod = importlib.import_module(f"{_pkg.__name__}.{info.name}")
        found.append(Migration(int(m.group(1)), m.group(2), tuple(mod.STATEMENTS)))
    found.sort(key=lambda x: x.version)
    versions = [x.version for x in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


def _ensure_table(store: Store) -> None:
    store.command(
        f"CREATE TABLE IF NOT EXISTS {cv.SCHEMA_MIGRATIONS} (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
    )


def current_version(store: Store) -> int:
    try:
        res = store.query(f"SELECT max(version) FROM {cv.SCHEMA_MIGRATIONS}")
    except QueryError:
        return 0
    value = res.rows[0][0] if res.rows else 0
    return int(value or 0)


def migrate(store: Store) -> list[int]:
    """Bring the store up to the newest known schema; returns the versions applied."""
    _ensure_table(store)
    known = known_migrations()
    newest = known[-1].version if known else 0
    have = current_version(store)
    if have > newest:
        raise SchemaTooNew(
            f"store {store.database!r} has schema version {have}, newer than this Governor "
            f"knows ({newest}); upgrade Governor or point it at another database"
        )
    applied = []
    for mig in known:
        if mig.version <= have:
            continue
        log.info("applying migration %04d_%s", mig.version, mig.name)
        for stmt in mig.statements:
            store.command(stmt)
        store.insert_rows(
            cv.SCHEMA_MIGRATIONS,
            ["version", "name", "applied_at"],
            [(mig.version, mig.name, datetime.now(UTC))],
        )
        applied.append(mig.version)
    return applied


def apply_retention(store: Store, days: dict[str, int]) -> None:
    """Set TTLs from config (``{table: days}``); days are validated ints, tables known."""
    for table, n in days.items():
        if table not in _TTL_COLUMN:
            raise QueryError(f"retention: unknown table {table!r}")
        if not isinstance(n, int) or n < 1:
            raise QueryError(f"retention for {table}: expected a positive number of days")
        col = _TTL_COLUMN[table]
        store.command(f"ALTER TABLE {table} MODIFY TTL {col} + INTERVAL {int(n)} DAY")


_TTL_COLUMN = {
    cv.REQUESTS: "toDateTime(ts)",
    cv.GPU_SAMPLES: "toDateTime(ts)",
    cv.REPLICA_SAMPLES: "toDateTime(ts)",
    cv.REQUESTS_1M: "minute",
    cv.REQUESTS_1H: "hour",
    cv.REQUESTS_1M_POOL: "minute",
    cv.REQUESTS_1H_POOL: "hour",
    cv.ACTIONS: "toDateTime(ts)",
    cv.ALERT_EVENTS: "toDateTime(ts)",
    cv.SLO_EVALUATIONS: "toDateTime(ts)",
}
