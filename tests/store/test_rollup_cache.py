"""Reads through ``RollupCache`` give the uncached answer, before and after late rows."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from controlplane.store.base import Store
from controlplane.store.rollups import (
    _BOUNDS,
    N_SLOTS,
    RollupCache,
    Selector,
    availability_good_total,
    latency_good_total,
    latency_quantiles,
    slots,
    throughput_good_total,
)

COLS = ["ts", "pool", "model", "tenant", "status", "ttft_us", "output_tokens_per_s"]


def _end() -> datetime:
    """Minute 30 of the current hour: where the hours of a window fall does not depend on
    when the test runs (a window ending at 02:00 would close an hour still filling)."""
    return datetime.now(UTC).replace(minute=30, second=0, microsecond=0)


def _rows(start: datetime, minutes: int, n: int, seed: int) -> list[tuple[object, ...]]:
    rng = random.Random(seed)
    out: list[tuple[object, ...]] = []
    for _ in range(n):
        ts = start + timedelta(seconds=rng.uniform(0, minutes * 60))
        out.append((
            ts, rng.choice(["a", "b"]), "m", rng.choice(["t1", "t2"]),
            "error" if rng.random() < 0.05 else "ok",
            int(rng.lognormvariate(math.log(200_000), 0.8)), rng.uniform(5, 120),
        ))  # fmt: skip
    return out


def _all_reads(store: Store, sel: Selector, t0: datetime, t1: datetime, cache: RollupCache | None):  # type: ignore[no-untyped-def]
    return (
        [latency_good_total(store, sel, "ttft", t, t0, t1, cache) for t in (0.25, 0.2034, 1.5)],
        availability_good_total(store, sel, t0, t1, cache),
        throughput_good_total(store, sel, 40, t0, t1, cache),
        latency_quantiles(store, sel, "ttft", [0.5, 0.99], t0, t1, cache),
    )


ROLLUPS = ("requests_1m", "requests_1h", "requests_1m_pool", "requests_1h_pool")
WINDOWS = [(300, 0), (295, 7), (45, 5), (125, 60), (181, 1), (60, 0)]  # minutes before `end`


@pytest.mark.parametrize("sel", [Selector(pool="a"), Selector(), Selector(pool="b", tenant="t2")])
def test_cached_reads_equal_uncached_reads_and_hit_the_second_time(store: Store, sel) -> None:  # type: ignore[no-untyped-def]
    end = _end()
    store.insert_rows("requests", COLS, _rows(end - timedelta(hours=5), 300, 2000, 7))
    cache = RollupCache()
    for a, b in WINDOWS:
        t0, t1 = end - timedelta(minutes=a), end - timedelta(minutes=b)
        want = _all_reads(store, sel, t0, t1, None)
        assert _all_reads(store, sel, t0, t1, cache) == want
        before = (cache.stats.hour_hits, cache.stats.minute_hits, cache.stats.statements)
        assert _all_reads(store, sel, t0, t1, cache) == want
        hits = cache.stats.hour_hits + cache.stats.minute_hits - before[0] - before[1]
        assert (hits > 0) == (t0 < t1.replace(minute=0))  # held: whatever is before the hour
        assert cache.stats.statements - before[2] == 6  # one statement per read


def test_late_rows_into_held_hours_and_minutes_are_read_again(store: Store) -> None:
    end = _end()
    store.insert_rows("requests", COLS, _rows(end - timedelta(hours=5), 300, 1000, 1))
    cache = RollupCache()
    sel = Selector(pool="a")
    t0, t1 = end - timedelta(minutes=295), end - timedelta(minutes=2)
    for _ in range(2):  # the first call reads as uncached, the second learns the blocks
        latency_good_total(store, sel, "ttft", 0.25, t0, t1, cache)
    first = latency_good_total(store, sel, "ttft", 0.25, t0, t1, cache)  # holds the buckets
    assert cache.stats.hour_hits == 0
    assert latency_good_total(store, sel, "ttft", 0.25, t0, t1, cache) == first
    assert cache.stats.hour_hits == 1 and cache.stats.minute_hits == 1
    # a spool replay: rows into a whole hour and into the held edge minutes
    late = [
        (t0 + timedelta(minutes=90), "a", "m", "t1", "ok", 1000, 50.0),
        (t0 + timedelta(minutes=1, seconds=5), "a", "m", "t2", "ok", 900_000, 50.0),
    ]
    store.insert_rows("requests", COLS, late)
    got = latency_good_total(store, sel, "ttft", 0.25, t0, t1, cache)
    assert got == latency_good_total(store, sel, "ttft", 0.25, t0, t1)
    assert (got.good, got.total) == (first.good + 1, first.total + 2)
    assert cache.stats.invalidations >= 2
    # and the next read holds the new answer again
    assert latency_good_total(store, sel, "ttft", 0.25, t0, t1, cache) == got


def test_rows_in_the_open_minutes_count_without_dropping_held_buckets(store: Store) -> None:
    end = _end()
    store.insert_rows("requests", COLS, _rows(end - timedelta(hours=3), 180, 500, 3))
    cache = RollupCache()
    sel = Selector(pool="a")
    t0, t1 = end - timedelta(minutes=170), end + timedelta(minutes=1)
    for _ in range(2):  # the first call reads as uncached, the second learns the blocks
        availability_good_total(store, sel, t0, t1, cache)
    first = availability_good_total(store, sel, t0, t1, cache)  # holds the closed buckets
    assert cache.stats.hour_hits == 0
    # A background merge of the new part with older ones may drop held buckets needlessly
    # (the class says so); with merges stopped, only the new part itself is seen.
    for t in ROLLUPS:
        store.command(f"SYSTEM STOP MERGES {t}")
    store.insert_rows("requests", COLS, [(end, "a", "m", "t1", "ok", 1000, 50.0)])
    got = availability_good_total(store, sel, t0, t1, cache)
    assert (got.good, got.total) == (first.good + 1, first.total + 1)
    assert cache.stats.invalidations == 0 and cache.stats.hour_hits == 1
    # a merge that takes the new part in may drop held buckets, never the answer
    for t in ROLLUPS:
        store.command(f"SYSTEM START MERGES {t}")
        store.command(f"OPTIMIZE TABLE {t} FINAL")
    assert availability_good_total(store, sel, t0, t1, cache) == got
    assert availability_good_total(store, sel, t0, t1) == got


def test_dense_slots_cover_every_two_significant_digit_bound() -> None:
    fits = _BOUNDS[_BOUNDS < 2**32]  # the top decade is cut by UInt32
    assert list(slots(fits)) == list(range(len(fits))) and len(fits) > N_SLOTS - 60
    assert np.all(np.diff(_BOUNDS) > 0)  # slots are in key order
    assert slots([0, 99, 100, 110, 250_000, 4_200_000_000]).tolist() == [
        0, 99, 100, 101, 100 + 90 * 3 + 15, 100 + 90 * 7 + 32,
    ]  # fmt: skip
    for bad in ([101], [250_001], [-1], [2**32]):
        with pytest.raises(ValueError):
            slots(bad)


def test_both_drivers_read_the_same_through_the_cache(any_store: Store) -> None:
    end = _end()
    any_store.insert_rows("requests", COLS, _rows(end - timedelta(hours=3), 180, 400, 5))
    cache = RollupCache()
    sel = Selector(pool="b")
    t0, t1 = end - timedelta(minutes=170), end - timedelta(minutes=3)
    want = _all_reads(any_store, sel, t0, t1, None)
    assert _all_reads(any_store, sel, t0, t1, cache) == want
    assert _all_reads(any_store, sel, t0, t1, cache) == want
    any_store.insert_rows(
        "requests", COLS, [(t0 + timedelta(minutes=70), "b", "m", "t1", "ok", 10, 9.0)]
    )
    assert _all_reads(any_store, sel, t0, t1, cache) == _all_reads(any_store, sel, t0, t1, None)
    assert cache.stats.invalidations > 0


def test_naive_datetimes_are_utc_as_in_uncached_reads(store: Store) -> None:
    end = _end()
    store.insert_rows("requests", COLS, _rows(end - timedelta(hours=2), 120, 300, 9))
    t0, t1 = end - timedelta(minutes=100), end
    naive = (t0.replace(tzinfo=None), t1.replace(tzinfo=None))
    want = availability_good_total(store, Selector(), t0, t1)
    assert availability_good_total(store, Selector(), *naive, RollupCache()) == want


class _Recording:
    """The store, recording each statement's SQL."""

    def __init__(self, store: Store) -> None:
        self._store, self.database = store, store.database
        self.sql: list[str] = []

    def query(self, sql: str, params: Any = None) -> Any:
        self.sql.append(sql)
        return self._store.query(sql, params)


def test_a_first_call_costs_one_plain_statement_later_ones_check_parts(store: Store) -> None:
    end = _end()
    rec, cache = _Recording(store), RollupCache()
    t0 = end - timedelta(minutes=150)
    for _ in range(3):
        latency_good_total(rec, Selector(pool="a"), "ttft", 0.25, t0, end, cache)  # type: ignore[arg-type]
    assert ["system.parts" in sql for sql in rec.sql] == [False, True, True]
