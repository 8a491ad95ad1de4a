"""Compaction of the hourly rollups: one part per partition, the same sums after."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.api.auth import TokenAuth
from controlplane.clock import ManualClock
from controlplane.config import CompactionConfig, GovernorConfig, StoreConfig, parse_config
from controlplane.errors import ConfigError, QueryError, StoreUnavailable
from controlplane.server import build_context
from controlplane.store.base import Store
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.compaction import (
    HOURLY_ROLLUPS,
    Compactor,
    build,
    compact,
    fragmented,
    seconds_until_hour,
)
from tests.store.test_rollup_views import _rows

_SNAPSHOT = (
    "SELECT pool, model, {tenant} hour, sum(requests), sum(errors), sumMap(ttft_hist),"
    " sumMap(tps_hist), sum(cost_usd) FROM {table}"
    " GROUP BY pool, model, {tenant} hour ORDER BY pool, model, {tenant} hour"
)


def _snapshot(store: ChdbStore) -> dict[str, list[tuple[Any, ...]]]:
    sql = {t: _SNAPSHOT.format(table=t, tenant="" if t.endswith("_pool") else "tenant,")
           for t in HOURLY_ROLLUPS}  # fmt: skip
    return {t: store.query(q).rows for t, q in sql.items()}


def _parts(store: ChdbStore) -> dict[tuple[str, str], int]:
    rows = store.query(
        "SELECT toString(table), partition_id, toUInt64(count()) FROM system.parts"
        " WHERE database = {db:String} AND active AND table IN {t:Array(String)}"
        " GROUP BY table, partition_id",
        {"db": store.database, "t": list(HOURLY_ROLLUPS)},
    ).rows
    return {(t, p): int(n) for t, p, n in rows}


@pytest.fixture
def fragmented_store(store: ChdbStore) -> ChdbStore:
    """Three inserts spanning the turn of a month, merges held: 3 parts per partition."""
    for t in HOURLY_ROLLUPS:
        store.command(f"SYSTEM STOP MERGES {t}")
    start = datetime(2026, 11, 29, 7, tzinfo=UTC)
    for seed in range(3):
        store.insert_arrow("requests", _rows(400, start, timedelta(days=3), seed))
    for t in HOURLY_ROLLUPS:
        store.command(f"SYSTEM START MERGES {t}")
    return store


def test_fragmented_partitions_merge_into_one_part_with_the_same_sums(
    fragmented_store: ChdbStore,
) -> None:
    store = fragmented_store
    before, stored_rows = _snapshot(store), store.query("SELECT count() FROM requests_1h").rows
    found = fragmented(store, HOURLY_ROLLUPS, 1)
    assert {(p.table, p.partition_id) for p in found} == {
        (t, m) for t in HOURLY_ROLLUPS for m in ("202611", "202612")
    }
    assert all(p.parts >= 2 for p in found)  # three inserts (merges may have begun)

    done = compact(store)

    assert [(c.partition.table, c.partition.partition_id, c.error) for c in done] == [
        (p.table, p.partition_id, "") for p in found
    ]
    assert set(_parts(store).values()) == {1}
    assert _snapshot(store) == before
    # FINAL aggregated the rows of a series and hour that came in different inserts.
    series_hours = store.query(
        "SELECT count() FROM (SELECT DISTINCT pool, model, tenant, hour FROM requests_1h)"
    ).rows
    assert store.query("SELECT count() FROM requests_1h").rows == series_hours
    assert series_hours[0][0] < stored_rows[0][0]
    assert compact(store) == []  # nothing left to merge


def test_partitions_at_or_under_max_parts_are_left_alone(fragmented_store: ChdbStore) -> None:
    parts = _parts(fragmented_store)
    most = max(parts.values())
    assert compact(fragmented_store, max_parts=most) == []
    assert _parts(fragmented_store) == parts
    with pytest.raises(ValueError, match="max_parts must be at least 1"):
        compact(fragmented_store, max_parts=0)


class _FailingOptimize:
    """The store, except that merging ``table`` fails as an engine error would."""

    def __init__(self, store: ChdbStore, table: str) -> None:
        self._store, self._table = store, table
        self.database = store.database

    def optimize_partition(self, table: str, partition_id: str) -> None:
        if table == self._table:
            raise QueryError("Code: 388. DB::Exception: Cannot OPTIMIZE table")
        self._store.optimize_partition(table, partition_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_failed_merge_is_reported_and_the_others_still_run(
    fragmented_store: ChdbStore,
) -> None:
    done = compact(_FailingOptimize(fragmented_store, "requests_1h"))  # type: ignore[arg-type]
    errors = {(c.partition.table, c.partition.partition_id): c.error for c in done}
    assert errors[("requests_1h", "202611")].startswith("Code: 388")
    assert errors[("requests_1h_pool", "202611")] == ""
    parts = _parts(fragmented_store)
    assert parts[("requests_1h_pool", "202611")] == parts[("requests_1h_pool", "202612")] == 1
    assert parts[("requests_1h", "202611")] > 1


def test_table_names_are_checked(store: ChdbStore) -> None:
    with pytest.raises(QueryError, match="invalid table name"):
        compact(store, ["requests_1h; DROP TABLE requests"])


class _Down:
    database = "governor"

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        raise StoreUnavailable("embedded store unavailable: gone")


def test_compactor_reports_an_unavailable_store_and_keeps_running() -> None:
    c = Compactor(_Down())  # type: ignore[arg-type]
    assert c.run_once() == []
    assert c.health()["last_error"] == "embedded store unavailable: gone"
    assert c.health()["runs"] == 0


def test_the_job_runs_daily_at_its_hour() -> None:
    midnight = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    assert seconds_until_hour(midnight, 3) == 3 * 3600
    assert seconds_until_hour(midnight + 3 * 3600, 3) == 86_400  # just ran: tomorrow
    assert seconds_until_hour(midnight + 5 * 3600 + 30, 3) == 22 * 3600 - 30
    with pytest.raises(ValueError, match="hour_utc must be 0-23"):
        Compactor(_Down(), 24)  # type: ignore[arg-type]


class _Gate:
    """Stands in for ``threading.Event``: the first wait returns at once, as if the hour
    had come; later ones until ``stop`` sets it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.ran, self.stopped = threading.Event(), threading.Event()

    def wait(self, delay: float) -> bool:
        self.delays.append(delay)
        if len(self.delays) == 1:
            return False
        self.ran.set()
        return self.stopped.wait(30)

    def set(self) -> None:
        self.stopped.set()

    def is_set(self) -> bool:
        return self.stopped.is_set()

    def clear(self) -> None:
        self.stopped.clear()


def test_compactor_runs_at_its_hour_until_stopped(fragmented_store: ChdbStore) -> None:
    clock = ManualClock(1_700_006_400.0 + 3600)  # 01:00 UTC
    c = Compactor(fragmented_store, 3, clock=clock)
    gate = _Gate()
    c._stop = gate  # type: ignore[assignment]
    c.start()
    try:
        assert gate.ran.wait(30)  # ran once, now waiting for the next day
        assert gate.delays[0] == 2 * 3600
        assert c.health() | {"next_run": 0} == {
            "running": True, "hour_utc": 3, "next_run": 0, "runs": 1,
            "partitions_compacted": 4, "last_error": "",
        }  # fmt: skip
    finally:
        c.stop()
    assert not c.health()["running"]
    assert set(_parts(fragmented_store).values()) == {1}


def test_a_stop_during_a_run_merges_no_further_partition(fragmented_store: ChdbStore) -> None:
    asked: list[str] = []

    def stopping() -> bool:
        asked.append("?")
        return len(asked) > 1  # stop requested while the first partition merged

    merges: list[str] = []

    class Recording(_FailingOptimize):
        def optimize_partition(self, table: str, partition_id: str) -> None:
            merges.append(f"{table} {partition_id}")
            super().optimize_partition(table, partition_id)

    done = compact(Recording(fragmented_store, "none"), stopping=stopping)  # type: ignore[arg-type]
    assert len(done) == 1 and not done[0].error
    assert merges == ["requests_1h 202611"]


def test_the_embedded_merge_does_not_wait_for_the_session(fragmented_store: ChdbStore) -> None:
    # The session's lock held throughout (as by a long query on another thread): a merge
    # that needed it could not finish before the lock is let go.
    finished = threading.Event()
    merge = threading.Thread(
        target=lambda: (
            fragmented_store.optimize_partition("requests_1h", "202611"),
            finished.set(),
        ),  # fmt: skip
    )
    with fragmented_store._emb.lock:
        merge.start()
        assert finished.wait(30)
    merge.join()
    assert _parts(fragmented_store)[("requests_1h", "202611")] == 1


def test_partition_ids_and_names_are_checked_before_any_sql(store: ChdbStore) -> None:
    for table, pid, message in (("requests_1h", "2026'; DROP", "invalid partition id"),
                                ("requests_1h x", "202611", "invalid table name")):  # fmt: skip
        with pytest.raises(QueryError, match=message):
            store.optimize_partition(table, pid)
    with pytest.raises(QueryError, match="UNKNOWN_TABLE|does not exist|doesn't exist"):
        store.optimize_partition("no_such_table", "202611")


def test_both_drivers_merge_a_partition(any_store: Store) -> None:
    any_store.command("SYSTEM STOP MERGES requests_1h")
    for seed in range(2):
        start = datetime(2026, 11, 10, tzinfo=UTC)
        any_store.insert_arrow("requests", _rows(50, start, timedelta(hours=5), seed))
    any_store.command("SYSTEM START MERGES requests_1h")
    assert _parts(any_store)[("requests_1h", "202611")] >= 2  # type: ignore[arg-type]
    any_store.optimize_partition("requests_1h", "202611")
    assert _parts(any_store)[("requests_1h", "202611")] == 1  # type: ignore[arg-type]


def test_serve_adds_the_job_unless_disabled(store: ChdbStore) -> None:
    auth = TokenAuth({"t": "viewer"})
    on = build_context(GovernorConfig(), store, auth, builders=[build])
    assert on.components["rollup-compaction"].health()["hour_utc"] == 3
    off_cfg = GovernorConfig(store=StoreConfig(compaction=CompactionConfig(enabled=False)))
    off = build_context(off_cfg, store, auth, builders=[build])
    assert "rollup-compaction" not in off.components


def test_config_rejects_an_hour_out_of_the_day() -> None:
    with pytest.raises(ConfigError, match=r"store\.compaction\.hour_utc"):
        parse_config({"store": {"compaction": {"hour_utc": 24}}})
