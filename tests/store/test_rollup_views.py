"""The rollup views of m0005 give exactly what m0001's views gave, through both drivers.

m0005 rewrote the bucket expressions and feeds ``requests_1h`` from ``requests_1m``
instead of the raw rows. The reference here is m0001's own SQL run over the raw rows,
so "same answers" means same rows, same counts and the same histogram maps.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from controlplane import conventions as cv
from controlplane.store.base import Store
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import known_migrations, migrate
from controlplane.store.migrations import m0001_initial as m1
from controlplane.store.migrations import m0005_cheaper_rollup_views as m5

_HISTS = ("ttft_hist", "tpot_hist", "e2e_hist", "queue_hist", "tps_hist")
_SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cost_usd")


def _rows(n: int, start: datetime, span: timedelta, seed: int) -> pa.Table:
    """Requests spread over ``span`` from ``start``: some errors, some missing latencies."""
    rng = random.Random(seed)
    ts = sorted(start + span * rng.random() for _ in range(n))

    def lat(median: float) -> list[int | None]:
        return [
            None if rng.random() < 0.05 else int(rng.lognormvariate(math.log(median), 1.2))
            for _ in range(n)
        ]

    tps = [None if rng.random() < 0.1 else rng.lognormvariate(math.log(40), 1.5) for _ in range(n)]
    cost = [Decimal(rng.randint(0, 10**7)).scaleb(-9) for _ in range(n)]
    return pa.table({
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "pool": [rng.choice(["a", "b", "c"]) for _ in range(n)],
        "model": [rng.choice(["m1", "m2"]) for _ in range(n)],
        "tenant": [rng.choice(["", "t1", "t2", "t3"]) for _ in range(n)],
        "status": ["error" if rng.random() < 0.05 else "ok" for _ in range(n)],
        "ttft_us": pa.array(lat(200_000), pa.uint32()),
        "tpot_us": pa.array(lat(20_000), pa.uint32()),
        "e2e_us": pa.array(lat(3_000_000), pa.uint32()),
        "queue_us": pa.array(lat(500), pa.uint32()),
        "output_tokens_per_s": pa.array(tps, pa.float32()),
        "input_tokens": pa.array([rng.randint(0, 5000) for _ in range(n)], pa.uint32()),
        "output_tokens": pa.array([rng.randint(0, 900) for _ in range(n)], pa.uint32()),
        "cached_tokens": pa.array([rng.randint(0, 300) for _ in range(n)], pa.uint32()),
        "cost_usd": pa.array(cost, pa.decimal128(18, 9)),
    })  # fmt: skip


def _reference(store: Store, bucket: str, fn: str, tenant: bool) -> list[tuple[Any, ...]]:
    """What m0001's view SQL computes from all raw rows, one row per bucket and series."""
    by = f"{bucket}, pool, model" + (", tenant" if tenant else "")
    sql = m1._rollup_view("x", "y", bucket, fn).split(" AS\n", 1)[1]
    sql = sql.replace("GROUP BY " + f"{bucket}, pool, model, tenant", "GROUP BY " + by)
    if not tenant:
        sql = sql.replace(
            f"{fn}(ts) AS {bucket}, pool, model, tenant,", f"{fn}(ts) AS {bucket}, pool, model,"
        )
    return _normalized(store, f"SELECT * FROM ({sql})", by)


def _rollup(store: Store, table: str, bucket: str, tenant: bool) -> list[tuple[Any, ...]]:
    by = f"{bucket}, pool, model" + (", tenant" if tenant else "")
    cols = ", ".join(
        [f"sum({c}) AS {c}" for c in _SUMS[:2]]
        + [f"sumMap({h}) AS {h}" for h in _HISTS]
        + [f"sum({c}) AS {c}" for c in _SUMS[2:]]
    )
    return _normalized(store, f"SELECT {by}, {cols} FROM {table} GROUP BY {by}", by)


def _normalized(store: Store, sql: str, by: str) -> list[tuple[Any, ...]]:
    keys = by.split(", ")
    cols = ", ".join(
        [f"toUInt32({keys[0]})", *keys[1:]]
        + [f"toUInt64({c})" for c in _SUMS[:2]]
        + [f"mapFilter((k, v) -> v > 0, {h})" for h in _HISTS]
        + [f"toUInt64({c})" for c in _SUMS[2:5]]
        + ["toString(cost_usd)"]
    )
    rows = store.query(f"SELECT {cols} FROM ({sql}) ORDER BY {by}").rows
    return [tuple(dict(v) if isinstance(v, list) else v for v in r) for r in rows]


def _assert_rollups_match_m0001(store: Store) -> None:
    for table, bucket, fn, tenant in [
        (cv.REQUESTS_1M, "minute", "toStartOfMinute", True),
        (cv.REQUESTS_1H, "hour", "toStartOfHour", True),
        (cv.REQUESTS_1M_POOL, "minute", "toStartOfMinute", False),
        (cv.REQUESTS_1H_POOL, "hour", "toStartOfHour", False),
    ]:
        want = _reference(store, bucket, fn, tenant)
        assert want, table
        assert _rollup(store, table, bucket, tenant) == want, table


def _edges(top: int, scale: float = 1.0) -> list[float]:
    """0, the top of the range, and +-3 around every two-significant-digit bound."""
    bounds = {m * 10**d for d in range(10) for m in range(10, 101)} | {0, top}
    return sorted({min(max(b + o, 0), top) * scale for b in bounds for o in range(-3, 4)})


def test_bucket_keys_equal_m0001s_at_every_decade_edge(shared_store: Store) -> None:
    # Latencies are Nullable(UInt32): NULL, 0, UInt32 max (where toUInt32 wraps) and the
    # edges of every decade, where rounding up changes bucket.
    values = ",".join(str(int(v)) for v in _edges(2**32 - 1))
    lat = f"SELECT CAST(arrayJoin([{values}, NULL]) AS Nullable(UInt32)) AS v"
    old, new = m1._round_up_2sig("v"), m5.round_up_2sig("v")
    got = shared_store.query(f"SELECT count(), countIf({old} != {new}) FROM ({lat})").rows[0]
    assert got[0] > 4000 and got[1] == 0
    # Throughput: Float32 tokens/s, x1000 and capped at 4e6 tokens/s as m0001 does.
    values = ",".join(repr(v) for v in _edges(10**10, 1e-3))
    tps = f"SELECT CAST(arrayJoin([{values}, NULL]) AS Nullable(Float32)) AS t"
    old = m1._round_down_2sig("least(t, 4000000) * 1000")
    new = m5.round_down_2sig_tps("t")
    got = shared_store.query(f"SELECT count(), countIf({old} != {new}) FROM ({tps})").rows[0]
    assert got[0] > 4000 and got[1] == 0


@pytest.mark.parametrize("batch", [1_000, 400], ids=["one-block", "many-blocks"])
def test_rollups_equal_m0001s_views_across_minutes_hours_and_partitions(
    any_store: Store, batch: int
) -> None:
    # 2,400 rows over the last ~5 days: minute and hour bounds, several daily raw
    # partitions (and the month partitions of the rollups when the window crosses one).
    end = datetime.now(UTC).replace(microsecond=0)
    data = _rows(2_400, end - timedelta(days=5), timedelta(days=5), seed=batch)
    for i in range(0, data.num_rows, batch):
        any_store.insert_arrow(cv.REQUESTS, data.slice(i, batch))
    _assert_rollups_match_m0001(any_store)


def test_a_retried_batch_counts_once_in_every_chained_rollup(any_store: Store) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    data = _rows(500, end - timedelta(hours=3), timedelta(hours=3), seed=3)
    for _ in range(3):
        any_store.insert_arrow(cv.REQUESTS, data, dedup_token="otlp-batch-1")
    totals = [
        any_store.query(f"SELECT sum(requests) FROM {t}").rows[0][0]
        for t in (cv.REQUESTS_1M, cv.REQUESTS_1H, cv.REQUESTS_1M_POOL, cv.REQUESTS_1H_POOL)
    ]
    assert totals == [500] * 4
    _assert_rollups_match_m0001(any_store)
    any_store.insert_arrow(cv.REQUESTS, data, dedup_token="otlp-batch-2")
    assert any_store.query(f"SELECT sum(requests) FROM {cv.REQUESTS_1H_POOL}").rows[0][0] == 1000


@pytest.fixture
def m0004_store(chdb_path: Any) -> Iterator[ChdbStore]:
    """An embedded store migrated only up to m0004 (m0005 not applied yet)."""
    s = ChdbStore(chdb_path, database=f"t_{uuid.uuid4().hex[:12]}")
    s.command(
        f"CREATE TABLE {cv.SCHEMA_MIGRATIONS} (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
    )
    for mig in known_migrations():
        if mig.version <= 4:
            for stmt in mig.statements:
                s.command(stmt)
            s.insert_rows(cv.SCHEMA_MIGRATIONS, ["version", "name", "applied_at"],
                          [(mig.version, mig.name, datetime.now(UTC))])  # fmt: skip
    try:
        yield s
    finally:
        s.command(f"DROP DATABASE IF EXISTS {s.database}")
        s.close()


def test_upgrading_to_m0005_keeps_the_rollups_and_the_answers(m0004_store: ChdbStore) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    before = _rows(800, end - timedelta(hours=4), timedelta(hours=2), seed=11)
    after = _rows(800, end - timedelta(hours=3), timedelta(hours=3), seed=12)
    m0004_store.insert_arrow(cv.REQUESTS, before)
    assert migrate(m0004_store) == [v.version for v in known_migrations() if v.version > 4]
    m0004_store.insert_arrow(cv.REQUESTS, after)  # overlaps the hours written before
    _assert_rollups_match_m0001(m0004_store)
