"""The store: ClickHouse through one protocol, embedded (chDB) or a server.

``open_store`` picks the driver, applies migrations and retention, and returns a
ready ``Store``.
"""

from __future__ import annotations

import os

from controlplane import conventions as cv
from controlplane.config import StoreConfig
from controlplane.store.base import QueryResult, Store, StoreStatus, check_identifier
from controlplane.store.migrate import apply_retention, migrate

__all__ = [
    "QueryResult",
    "Store",
    "StoreStatus",
    "check_identifier",
    "open_store",
    "connect",
]


def connect(cfg: StoreConfig, *, data_dir: str | None = None) -> Store:
    """Open the configured driver without touching the schema."""
    url = os.environ.get(cv.ENV_CLICKHOUSE_URL) or cfg.url
    driver = cfg.driver or ("clickhouse" if url else "chdb")
    if driver == "clickhouse":
        if not url:
            from controlplane.errors import ConfigError, Problem

            raise ConfigError(
                [
                    Problem(
                        "store",
                        "store.url",
                        f"clickhouse driver needs a URL (store.url or {cv.ENV_CLICKHOUSE_URL})",
                    )
                ]
            )
        from controlplane.store.clickhouse_driver import ClickHouseStore

        return ClickHouseStore(
            url,
            database=cfg.database,
            username=os.environ.get(cv.ENV_CLICKHOUSE_USER),
            password=os.environ.get(cv.ENV_CLICKHOUSE_PASSWORD),
            connect_timeout_s=cfg.connect_timeout_s,
            query_timeout_s=cfg.query_timeout_s,
            async_insert=cfg.async_insert,
        )
    from controlplane.store.chdb_driver import ChdbStore

    path = data_dir or os.environ.get(cv.ENV_DATA_DIR) or cfg.data_dir
    return ChdbStore(path, database=cfg.database, query_timeout_s=cfg.query_timeout_s)


def open_store(cfg: StoreConfig, *, data_dir: str | None = None) -> Store:
    """Connect, migrate to the newest schema, and apply configured retention."""
    store = connect(cfg, data_dir=data_dir)
    try:
        migrate(store)
        r = cfg.retention
        apply_retention(
            store,
            {
                cv.REQUESTS: r.requests_days,
                cv.GPU_SAMPLES: r.samples_days,
                cv.REPLICA_SAMPLES: r.samples_days,
                cv.REQUESTS_1M: r.minute_rollups_days,
                cv.REQUESTS_1H: r.rollups_days,
                cv.REQUESTS_1M_POOL: r.minute_rollups_days,
                cv.REQUESTS_1H_POOL: r.rollups_days,
            },
        )
    except Exception:
        store.close()
        raise
    return store
