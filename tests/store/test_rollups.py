"""Rollup reads agree with raw scans: exactly for 2-significant-digit thresholds."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import migrate
from controlplane.store.rollups import (
    Selector,
    availability_good_total,
    latency_good_total,
    latency_quantiles,
    quantiles_from_histogram,
    round_up_2sig,
    throughput_good_total,
    totals,
)

COLS = ["ts", "pool", "model", "tenant", "status", "ttft_us", "tpot_us", "e2e_us",
        "queue_us", "output_tokens_per_s", "input_tokens", "output_tokens", "cost_usd"]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(chdb_path) -> Iterator[tuple[ChdbStore, datetime, list[tuple[object, ...]]]]:  # type: ignore[no-untyped-def]
    """3,000 requests over the last ~5 hours in two pools and two tenants (read-only)."""
    store = ChdbStore(chdb_path, database=f"t_{uuid.uuid4().hex[:12]}")
    migrate(store)
    rng = random.Random(7)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(hours=5)
    rows = []
    for _ in range(3000):
        ts = start + timedelta(seconds=rng.uniform(0, 5 * 3600))
        status = "error" if rng.random() < 0.03 else "ok"
        ttft = int(rng.lognormvariate(math.log(200_000), 0.8))
        rows.append((
            ts, rng.choice(["a", "b"]), "m", rng.choice(["t1", "t2"]), status, ttft,
            int(rng.lognormvariate(math.log(20_000), 0.4)), ttft * 10,
            int(rng.expovariate(1 / 20_000)), rng.uniform(5, 120),
            rng.randint(1, 4000), rng.randint(1, 800), rng.uniform(0, 0.01),
        ))  # fmt: skip
    store.insert_rows("requests", COLS, rows)
    yield store, end, rows
    store.command(f"DROP DATABASE IF EXISTS {store.database}")
    store.close()


WINDOWS = [  # (start offset, end offset) in minutes before `end`
    (300, 0),  # whole span: hours plus edges
    (295, 7),  # both edges ragged
    (45, 5),  # inside one hour only
    (125, 60),  # from mid-hour to an hour bound
]


def _raw_latency(rows, pool, t0, t1, idx, threshold_us):  # type: ignore[no-untyped-def]
    sel = [r for r in rows if r[1] == pool and t0 <= r[0].replace(second=0, microsecond=0) < t1
           and r[4] == "ok"]  # fmt: skip
    return sum(1 for r in sel if r[idx] <= threshold_us), len(sel)


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}m-to-{w[1]}m-ago")
@pytest.mark.parametrize("threshold_ms", [50, 200, 250, 1500, 35, 0.12, 2000])
def test_latency_good_total_is_exact_for_two_significant_digit_thresholds(
    loaded, window, threshold_ms
) -> None:  # type: ignore[no-untyped-def]
    store, end, rows = loaded
    t0, t1 = end - timedelta(minutes=window[0]), end - timedelta(minutes=window[1])
    got = latency_good_total(store, Selector(pool="a"), "ttft", threshold_ms / 1000, t0, t1)
    good, total = _raw_latency(rows, "a", t0, t1, 5, threshold_ms * 1000)
    assert (got.good, got.total, got.ambiguous) == (good, total, 0)


@pytest.mark.parametrize("threshold_ms", [123.4, 257, 1234])
def test_other_thresholds_are_bracketed_by_the_straddling_bucket(loaded, threshold_ms) -> None:  # type: ignore[no-untyped-def]
    store, end, rows = loaded
    t0 = end - timedelta(minutes=300)
    got = latency_good_total(store, Selector(pool="a"), "ttft", threshold_ms / 1000, t0, end)
    good, total = _raw_latency(rows, "a", t0, end, 5, threshold_ms * 1000)
    assert got.total == total
    assert got.good <= good <= got.good + got.ambiguous


def test_availability_counts_errors_per_selector(loaded) -> None:  # type: ignore[no-untyped-def]
    store, end, rows = loaded
    t0 = end - timedelta(minutes=295)
    got = availability_good_total(store, Selector(pool="b", tenant="t2"), t0, end)
    sel = [r for r in rows if r[1] == "b" and r[3] == "t2" and r[0] >= t0 and r[0] < end]
    assert got.total == len(sel)
    assert got.good == sum(1 for r in sel if r[4] == "ok")


def test_throughput_floor_counts_requests_at_or_above_it(loaded) -> None:  # type: ignore[no-untyped-def]
    store, end, rows = loaded
    t0 = end - timedelta(minutes=300)
    got = throughput_good_total(store, Selector(), 40, t0, end)
    ok = [r for r in rows if r[4] == "ok"]
    assert got.total == len(ok)
    # float32 storage may move a value within ~1e-6 of the floor: allow that sliver only
    lo = sum(1 for r in ok if r[9] >= 40.001)
    hi = sum(1 for r in ok if r[9] >= 39.999)
    assert lo <= got.good <= hi


def test_totals_sum_tokens_and_cost(loaded) -> None:  # type: ignore[no-untyped-def]
    store, end, rows = loaded
    got = totals(store, Selector(pool="a"), end - timedelta(hours=5), end)
    sel = [r for r in rows if r[1] == "a"]
    assert got.requests == len(sel)
    assert got.input_tokens == sum(r[10] for r in sel)
    assert got.output_tokens == sum(r[11] for r in sel)
    assert got.cost_usd == pytest.approx(sum(r[12] for r in sel), abs=1e-6)


def test_quantiles_are_never_below_truth_and_within_one_bucket(loaded) -> None:  # type: ignore[no-untyped-def]
    store, end, rows = loaded
    qs = [0.5, 0.9, 0.99]
    got = latency_quantiles(store, Selector(), "ttft", qs, end - timedelta(hours=5), end)
    values = sorted(r[5] for r in rows if r[4] == "ok")
    for q, g in zip(qs, got, strict=True):
        true_us = values[math.ceil(q * len(values)) - 1]
        assert g is not None
        assert g * 1e6 == pytest.approx(round_up_2sig(true_us))


def test_an_empty_window_has_no_ratio_and_no_quantiles(store: ChdbStore) -> None:
    end = datetime.now(UTC)
    got = latency_good_total(
        store, Selector(pool="none"), "ttft", 0.2, end - timedelta(hours=1), end
    )
    assert (got.good, got.total, got.ratio) == (0, 0, None)
    assert quantiles_from_histogram([], [], [0.5]) == [None]


@pytest.mark.parametrize(
    ("value", "bound"),
    [
        (0, 0),
        (99, 99),
        (100, 100),
        (101, 110),
        (250_000, 250_000),
        (250_001, 260_000),
        (995, 1000),
        (1_000_001, 1_100_000),
    ],  # fmt: skip
)
def test_bucket_bounds_round_up_to_two_significant_digits(value: int, bound: int) -> None:
    assert round_up_2sig(value) == bound


def test_pool_level_rollups_hold_the_tenant_rollups_summed(loaded) -> None:  # type: ignore[no-untyped-def]
    store, _, _ = loaded
    for grain, bucket in (("1m", "minute"), ("1h", "hour")):
        by_tenant = store.query(
            f"SELECT {bucket}, pool, sum(requests), sum(errors), sumMap(ttft_hist) "
            f"FROM requests_{grain} GROUP BY {bucket}, pool ORDER BY {bucket}, pool"
        ).rows
        pooled = store.query(
            f"SELECT {bucket}, pool, sum(requests), sum(errors), sumMap(ttft_hist) "
            f"FROM requests_{grain}_pool GROUP BY {bucket}, pool ORDER BY {bucket}, pool"
        ).rows
        assert pooled == by_tenant
        assert store.query(f"SELECT uniqExact(tenant) FROM requests_{grain}_pool").rows == [(1,)]


def test_migrating_a_store_with_data_backfills_the_pool_rollups_once(store: ChdbStore) -> None:
    from controlplane.store.migrations import m0004_pool_rollups

    now = datetime.now(UTC)
    store.insert_rows("requests", ["ts", "pool", "tenant"], [(now, "p", "t1"), (now, "p", "t2")])
    store.command("TRUNCATE TABLE requests_1m_pool")
    for stmt in m0004_pool_rollups.STATEMENTS * 2:  # a migration re-run must not double
        store.command(stmt)
    assert store.query("SELECT sum(requests) FROM requests_1m_pool").rows == [(2,)]
    assert store.query("SELECT sum(requests) FROM requests_1h_pool").rows == [(2,)]
