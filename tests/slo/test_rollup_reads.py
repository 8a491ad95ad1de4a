"""Which rollups the SLO reads use, and the held whole hours staying right as time passes.

Real embedded store, synthetic request rows, a ManualClock anchored near real now (the
raw table's TTL drops rows older than 30 days) at half past an hour.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from controlplane.clock import ManualClock, utc
from controlplane.errors import StoreUnavailable
from controlplane.slo import hours
from controlplane.slo.evaluate import Evaluation, Evaluator
from controlplane.slo.sli import window_counts
from controlplane.slo.spec import parse_slos
from controlplane.store.chdb_driver import ChdbStore

COLS = ["ts", "pool", "model", "tenant", "status", "ttft_us", "output_tokens_per_s"]
_FROM = re.compile(r"\bFROM\s+(requests\w*)")


@pytest.fixture
def now() -> float:
    return (int(time.time()) // 3600 - 1) * 3600 + 30 * 60 + 7.0


def traffic(store: ChdbStore, at: float, minutes: range, per_min: int, *, bad: int = 0,
            slow: int = 0, pool: str = "chat", tenant: str = "acme") -> None:  # fmt: skip
    """``per_min`` requests in each minute ``m`` minutes before ``at``: ``bad`` errors,
    ``slow`` with TTFT 900 ms, the rest 200 ms; output 50 tok/s (slow ones 5)."""
    rows = []
    for m in minutes:
        t = utc(at - m * 60)
        for k in range(per_min):
            err, is_slow = k < bad, bad <= k < bad + slow
            ttft = None if err else 900_000 if is_slow else 200_000
            tps = 5.0 if is_slow else 50.0
            rows.append((t, pool, "llama", tenant, "error" if err else "ok", ttft, tps))
    store.insert_rows("requests", COLS, rows)


class SpyStore:
    """A real store that records each query's SQL and the tables it reads."""

    def __init__(self, inner: ChdbStore) -> None:
        self.inner, self.tables, self.sql = inner, set[str](), list[str]()
        self.driver, self.database = inner.driver, inner.database

    def _saw(self, sql: str) -> None:
        self.sql.append(sql)
        self.tables |= set(_FROM.findall(sql))

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self._saw(sql)
        return self.inner.query(sql, params)

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self._saw(sql)
        return self.inner.query_df(sql, params)

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self._saw(sql)
        return self.inner.query_arrow(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


SLIS = {
    "availability": {"kind": "availability"},
    "latency": {"kind": "latency", "metric": "ttft", "threshold_s": 0.5},
    "throughput": {"kind": "throughput", "floor_tokens_per_s": 20},
}


def _slo(name: str, sli: str, **selector: str) -> Any:
    (slo,) = parse_slos({"slos": [{"name": name, "selector": selector, "sli": SLIS[sli],
                                   "objective": 99, "window": "28d"}]}, "t.yaml")  # fmt: skip
    return slo


def test_tenant_less_slos_read_pool_rollups_and_equal_the_sum_over_tenants(
    store: ChdbStore, now: float
) -> None:
    traffic(store, now, range(2, 400), per_min=6, bad=1, slow=1, tenant="acme")
    traffic(store, now, range(30, 250), per_min=4, bad=2, slow=1, tenant="beta")
    traffic(store, now, range(2, 100), per_min=3, bad=3, pool="other")  # not selected
    until = utc(now - 60).replace(second=0)
    # windows over hours and edges, inside one hour, and the whole SLO window
    sinces = {k: until - timedelta(minutes=m) for k, m in
              {"28d": 28 * 1440, "5h36m": 336, "56m": 56, "5m": 5, "3h": 180}.items()}  # fmt: skip
    for sli in SLIS:
        spy = SpyStore(store)
        pool_level = window_counts(spy, _slo("p", sli, pool="chat"), until, sinces)  # type: ignore[arg-type]
        by_model = window_counts(spy, _slo("m", sli, model="llama"), until, sinces)  # type: ignore[arg-type]
        # whole hours and edge minutes from the pool-level rollups
        assert spy.tables == {"requests_1h_pool", "requests_1m_pool"}, sli
        spy = SpyStore(store)
        tenants = [window_counts(spy, _slo(t, sli, pool="chat", tenant=t), until, sinces)  # type: ignore[arg-type]
                   for t in ("acme", "beta")]  # fmt: skip
        assert spy.tables == {"requests_1m", "requests_1h"}, sli
        for k in sinces:
            acme, beta = tenants[0][k], tenants[1][k]
            assert pool_level[k].total == acme.total + beta.total, (sli, k)
            assert pool_level[k].good == acme.good + beta.good, (sli, k)
            assert by_model[k].total >= pool_level[k].total  # "other" runs llama too
        assert pool_level["28d"].total > 0 and pool_level["5m"].total > 0
    # the figures themselves: 398 minutes of acme (1 error in 6), 220 of beta (2 in 4)
    avail = window_counts(store, _slo("a", "availability", pool="chat"), until, sinces)["28d"]
    assert (avail.good, avail.total) == (398 * 5 + 220 * 2, 398 * 6 + 220 * 4)


def _same(a: list[Evaluation], b: list[Evaluation]) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.slo, x.good, x.total, x.burn_rates, x.state) == (
            y.slo, y.good, y.total, y.burn_rates, y.state)  # fmt: skip


@pytest.mark.parametrize("split_rows", [None, 0], ids=["one-select", "select-per-histogram"])
def test_held_hours_are_read_once_and_again_only_when_rows_arrive_late(
    store: ChdbStore, now: float, split_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if split_rows is not None:  # force the long read's split, which small tables skip
        monkeypatch.setattr(hours, "_SPLIT_ROWS", split_rows)
    traffic(store, now, range(2, 400), per_min=4, bad=1, slow=1)
    specs = [
        {"name": "avail", "selector": {"pool": "chat"}, "sli": SLIS["availability"]},
        # 28 days: tier windows of 56m, 5h36m, 2d19h12m start at minute 4, 24 and 48
        {"name": "lat", "selector": {"pool": "chat"}, "sli": SLIS["latency"], "window": "28d"},
        {"name": "tenant", "selector": {"pool": "chat", "tenant": "acme"},
         "sli": SLIS["latency"]},
    ]  # fmt: skip
    slos = parse_slos({"slos": [{"objective": 99, "window": "30d", **s} for s in specs]}, "t")
    clock = ManualClock(now)
    ev = Evaluator(store, slos, clock=clock)

    def cycle() -> int:
        """One cycle; checks it equals an evaluator without held hours; hours read."""
        before = ev.hours.hours_read
        got = ev.run_once()
        uncached = Evaluator(store, slos, clock=ManualClock(clock.now()), save_hours=False)
        _same(got, uncached.run_once())
        return ev.hours.hours_read - before

    cold = cycle()
    assert cold >= 2 * 700  # the 30-day windows' hours, in both tables (pool and tenant)
    # The clock moves on within the hour: windows start at other minutes, but no hour
    # is read again (until = now - 1m offset goes from :29 to :58).
    for k in range(1, 30):
        clock.set(now + 60 * k)
        assert cycle() == 0
    # Rows arrive late for an hour already held (ingest lag beyond the offset): the next
    # cycle reads that one hour again, in both tables, and counts them.
    before = ev.latest["avail"]
    traffic(store, now, range(150, 151), per_min=40, bad=40)
    clock.advance(10)
    assert cycle() == 2
    assert ev.latest["avail"].total == before.total + 40
    assert ev.latest["avail"].good == before.good
    # Late rows in six held hours, every other hour, at once: those six are read again.
    for m in (90, 210, 330, 450, 570, 690):
        traffic(store, now, range(m, m + 1), per_min=2, bad=1)
    clock.advance(10)
    assert cycle() == 2 * 6
    # The hour turns (until = now - offset reaches the next hour): one new hour per table.
    turn = (int(now) // 3600 + 1) * 3600 + 60 + 7.0
    clock.set(turn)
    assert cycle() == 2
    # A request of the last minute of the hour just closed lands after the offset.
    total = ev.latest["tenant"].total
    traffic(store, turn - 60 - 30, range(0, 1), per_min=3)
    clock.advance(10)
    assert cycle() == 2
    assert ev.latest["tenant"].total == total + 3
    clock.advance(10)
    assert cycle() == 0


def _specs(threshold_s: float = 0.5) -> list[Any]:
    latency = {**SLIS["latency"], "threshold_s": threshold_s}
    specs = [
        {"name": "avail", "selector": {"pool": "chat"}, "sli": SLIS["availability"]},
        {"name": "lat", "selector": {"pool": "chat"}, "sli": latency},
        {"name": "tenant", "selector": {"pool": "chat", "tenant": "acme"}, "sli": latency},
    ]
    return parse_slos({"slos": [{"objective": 99, "window": "30d", **x} for x in specs]}, "t")


def _restart(store: ChdbStore, slos: list[Any], at: float) -> tuple[Evaluator, int]:
    """A new process's evaluator: its first cycle, checked against an uncached one."""
    ev = Evaluator(store, slos, clock=ManualClock(at))
    got = ev.run_once()
    ev.close()  # as a stopping process does: the hours it read are written
    _same(got, Evaluator(store, slos, clock=ManualClock(at), save_hours=False).run_once())
    return ev, ev.hours.hours_read


def test_a_restart_takes_the_saved_hours_and_reads_only_those_changed_since(
    store: ChdbStore, now: float
) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1, slow=1)
    slos = _specs()
    first, cold = _restart(store, slos, now)
    assert cold >= 2 * 700  # 30 days of hours, pool- and tenant-level
    # While no Governor runs, rows arrive for two hours it had read (a backfill).
    traffic(store, now, range(150, 151), per_min=40, bad=40)
    traffic(store, now, range(330, 331), per_min=3, slow=3)
    second, read = _restart(store, slos, now + 20)
    assert read == 2 * 2  # those two hours, in both tables; the rest was saved
    assert second.latest["avail"].total == first.latest["avail"].total + 43
    assert second.hours.saved is not None and second.hours.saved.hours_loaded >= 2 * 700 - 4
    # The hours it re-read were saved again: the next start reads nothing.
    _, read = _restart(store, slos, now + 40)
    assert read == 0


def test_a_changed_threshold_reads_only_its_columns_the_rest_comes_from_saved_hours(
    store: ChdbStore, now: float
) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1, slow=1)
    _restart(store, _specs(threshold_s=0.5), now)
    # Another threshold is another column: its hours come from the rollups (and the
    # result from them, not from the 0.5 s sums, which it must not reuse); the
    # availability columns are the same and come from the saved rows.
    spy = SpyStore(store)
    slos = _specs(threshold_s=0.95)
    ev = Evaluator(spy, slos, clock=ManualClock(now + 20))  # type: ignore[arg-type]
    _same(ev.run_once(), Evaluator(store, slos, clock=ManualClock(now + 20),
                                   save_hours=False).run_once())  # fmt: skip
    assert ev.latest["lat"].good == ev.latest["lat"].total  # 900 ms is under 0.95 s
    assert ev.hours.saved is not None and ev.hours.saved.hours_loaded >= 2 * 700
    (stmt,) = [q for q in spy.sql if "UNION ALL" in q and "_hist" in q and "hour" in q]
    hour_reads = [b for b in stmt.split("UNION ALL") if "FROM requests_1h" in b]
    assert len(hour_reads) == 2  # both tables: the new column only
    for b in hour_reads:
        assert "ttft_hist" in b and "requests - errors" not in b
    ev.close()
    # ... and the next start reads nothing: the rows were saved with every column.
    _, read = _restart(store, slos, now + 40)
    assert read == 0


def test_hours_are_saved_after_the_cycle_and_the_next_one_waits_for_the_write(
    store: ChdbStore, now: float
) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1, slow=1)
    slos = _specs()
    returned, next_cycle, writing = threading.Event(), threading.Event(), threading.Event()
    seen: list[str] = []

    class SlowSave(SpyStore):
        def insert_arrow(self, table: str, data: Any, **kw: Any) -> None:
            if table != "slo_hour_state":
                return self.inner.insert_arrow(table, data, **kw)
            writing.set()
            # Inside the cycle, ``returned`` is never set: 30 s, then said so.
            seen.append("save after the cycle" if returned.wait(30) else "save in the cycle")
            next_cycle.wait(30)
            time.sleep(0.3)  # time for a next cycle that does not wait to query
            self.inner.insert_arrow(table, data, **kw)
            writing.clear()
            seen.append("saved")

        def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
            if writing.is_set():
                seen.append("query during the save")
            return super().query(sql, params)

    ev = Evaluator(SlowSave(store), slos, clock=ManualClock(now))  # type: ignore[arg-type]
    ev.run_once()
    assert writing.wait(30)
    returned.set()
    second = threading.Thread(target=ev.run_once, args=(now + 20,))
    second.start()
    next_cycle.set()
    second.join(60)
    assert seen == ["save after the cycle", "saved"]
    assert ev.cycles == 2 and ev.hours.saved is not None and ev.hours.saved.hours_saved >= 1400
    ev.close()
    assert _restart(store, slos, now + 40)[1] == 0


def test_columns_needing_other_hours_are_read_apart() -> None:
    t0 = utc(1_700_000_000 - 1_700_000_000 % 3600)
    avail = ("requests - errors", "", 0)
    lat = ("countIf(ttft_hist < {thr:UInt32})", "thr", 5)
    sel = frozenset({("chat", "", "")})
    table = hours.HourTable("requests_1h_pool", {avail: sel, lat: sel})
    table.cover(t0, t0 + timedelta(hours=48))
    table.read[:, 0] = True  # availability held for every hour, latency for none
    table.fp[:] = 10
    counts = np.full(48, 10, dtype=np.int64)
    counts[7] = 11  # hour 7 got rows since it was read
    rows = np.ones(48, dtype=np.int64)
    got = sorted((r.cols, r.idxs) for r in table.reads(t0, counts, rows))
    assert got == [([0], [7]), ([1], list(range(48)))]


def test_unusable_saved_hours_are_read_again_and_said_so(
    store: ChdbStore, now: float, caplog: pytest.LogCaptureFixture
) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1, slow=1)
    slos = _specs()
    _restart(store, slos, now)
    # A newer saved row for one hour whose values do not fit its series and columns.
    rows = store.query_df("SELECT * FROM slo_hour_state FINAL ORDER BY hour DESC LIMIT 1")
    bad = rows.assign(vals=[[1, 2, 3]], saved_at=pd.Timestamp.now(tz="UTC"))
    store.insert_df("slo_hour_state", bad)
    with caplog.at_level("WARNING", logger="controlplane.slo.hour_state"):
        _, read = _restart(store, slos, now + 20)
    assert read >= 700  # that table's hours all come from the rollups
    assert "not loaded (they are read again)" in caplog.text
    assert "saved values do not fit their series" in caplog.text


def test_a_failed_save_or_load_is_logged_and_costs_a_read(
    store: ChdbStore, now: float, caplog: pytest.LogCaptureFixture
) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1, slow=1)
    slos = _specs()

    class NoSave(SpyStore):
        def insert_arrow(self, table: str, data: Any, **kw: Any) -> None:
            raise StoreUnavailable("store unavailable: connection refused")

    with caplog.at_level("WARNING", logger="controlplane.slo.hour_state"):
        failing = Evaluator(NoSave(store), slos, clock=ManualClock(now))  # type: ignore[arg-type]
        got = failing.run_once()
        failing.close()
    assert "not saved (a restart reads them again)" in caplog.text
    _same(got, Evaluator(store, slos, clock=ManualClock(now), save_hours=False).run_once())
    _, read = _restart(store, slos, now + 20)
    assert read >= 2 * 700

    class NoLoad(SpyStore):  # the saved rows cannot be read: the start reads the hours
        def query_arrow(self, sql: str, params: Any = None) -> Any:
            if "slo_hour_state" in sql:
                raise StoreUnavailable("store unavailable: connection refused")
            return super().query_arrow(sql, params)

    caplog.clear()
    with caplog.at_level("WARNING", logger="controlplane.slo.hour_state"):
        ev = Evaluator(NoLoad(store), slos, clock=ManualClock(now + 40))  # type: ignore[arg-type]
        got = ev.run_once()
    assert "not loaded (they are read again)" in caplog.text
    assert ev.hours.hours_read >= 2 * 700
    _same(got, Evaluator(store, slos, clock=ManualClock(now + 40), save_hours=False).run_once())


def test_a_long_read_is_split_per_histogram_only_when_it_covers_many_rows() -> None:
    t0 = utc(1_700_000_000 - 1_700_000_000 % 3600)
    lat = ("countIf(ttft_hist < {thr:UInt32})", "thr", 5)
    tps = ("countIf(tps_hist >= {floor:UInt32})", "floor", 20)
    total = ("sum(requests)", "", 0)
    sel = frozenset({("chat", "", "")})
    table = hours.HourTable("requests_1h_pool", {lat: sel, tps: sel, total: sel})
    tm = t0 + timedelta(hours=720)
    table.cover(t0, tm)
    counts = np.full(720, 10, dtype=np.int64)

    def parts(rows_per_hour: int) -> list[list[int]]:
        rows = np.full(720, rows_per_hour, dtype=np.int64)
        return [r.cols for r in table.reads(t0, counts, rows)]

    assert parts(8) == [[0, 1, 2]]  # 5,760 rows: one SELECT, every column
    assert sorted(parts(400)) == [[0], [1], [2]]  # 288,000 rows: one per histogram


def test_saved_rows_are_grouped_by_the_columns_they_hold() -> None:
    from controlplane.slo.hour_state import _by_columns

    t = pa.table({"cols": [["a", "b"], ["a", "b"], ["a", "c"], ["a", "c"]], "h": [1, 2, 3, 4]})
    got = [(sigs, part["h"].to_pylist()) for sigs, part in _by_columns(t)]
    assert got == [(["a", "b"], [1, 2]), (["a", "c"], [3, 4])]
    t = pa.table({"cols": [["a"], ["a", "b"]], "h": [1, 2]})  # lists of other lengths
    assert [(s, p.num_rows) for s, p in _by_columns(t)] == [(["a"], 1), (["a", "b"], 1)]
    assert _by_columns(t.slice(0, 0)) == []


def _avail(name: str, pool: str, offset: str = "1m") -> dict[str, Any]:
    return {"name": name, "selector": {"pool": pool}, "sli": SLIS["availability"],
            "objective": 99, "window": "30d", "alerting": {"offset": offset}}  # fmt: skip


def test_a_column_read_for_other_series_is_not_taken(store: ChdbStore, now: float) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1)
    traffic(store, now, range(2, 100), per_min=3, bad=2, pool="other")
    # Process A reads availability for chat only: its `requests` column holds chat's sums.
    _restart(store, parse_slos({"slos": [_avail("c", "chat")]}, "t"), now)
    # Process B reads the same SQL for chat and other: it must not take A's column (the
    # series it was read for are part of its signature); ``_restart`` checks B's answer.
    both = parse_slos({"slos": [_avail("c", "chat"), _avail("o", "other")]}, "t")
    ev, read = _restart(store, both, now + 20)
    assert read >= 700
    assert (ev.latest["o"].good, ev.latest["o"].total) == (98 * 1, 98 * 3)


def test_other_column_sets_keep_their_saved_rows(store: ChdbStore, now: float) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1)
    traffic(store, now, range(2, 100), per_min=3, bad=2, pool="other")
    # Two SLO sets on one store (two Governors, or batches of SLOs with other offsets in
    # one process): each start after the first of each set reads nothing.
    a = parse_slos({"slos": [_avail("c", "chat")]}, "t")
    b = parse_slos({"slos": [_avail("c", "chat"), _avail("o", "other")]}, "t")
    _restart(store, a, now)
    _restart(store, b, now + 10)
    for k in range(2):
        assert _restart(store, a, now + 20 + 20 * k)[1] == 0
        assert _restart(store, b, now + 30 + 20 * k)[1] == 0
    # One process with two offsets: two batches, two tables' worth of columns.
    mixed = parse_slos({"slos": [_avail("c", "chat"), _avail("o", "other", "45m")]}, "t")
    _restart(store, mixed, now + 100)
    assert _restart(store, mixed, now + 120)[1] == 0


def test_a_changed_threshold_and_a_backfill_are_read_in_one_go(
    store: ChdbStore, now: float
) -> None:
    traffic(store, now, range(2, 400), per_min=4, bad=1, slow=1)
    _restart(store, _specs(threshold_s=0.5), now)
    # While no Governor runs: a backfill into one hour and a changed threshold. The new
    # column needs every hour, the others only the backfilled one (two reads of other
    # hours in one statement); all of them are saved, so the next start reads nothing.
    traffic(store, now, range(150, 151), per_min=40, bad=40)
    slos = _specs(threshold_s=0.95)
    ev, read = _restart(store, slos, now + 20)
    assert read >= 700
    assert _restart(store, slos, now + 40)[1] == 0


def test_a_saved_row_naming_a_column_twice_is_refused() -> None:
    t0 = utc(1_700_000_000 - 1_700_000_000 % 3600)
    total = ("requests", "", 0)
    table = hours.HourTable("requests_1h_pool", {total: frozenset({("chat", "", "")})})
    table.cover(t0, t0 + timedelta(hours=2))
    one = np.array([int(t0.timestamp())], dtype=np.int64)
    rows = hours.HourRows(one, np.array([5]), np.array([0, 1]), [("chat", "", "")],
                          np.array([[3, 4]]))  # fmt: skip
    with pytest.raises(ValueError, match="saved columns repeat"):
        table.restore(rows, [0, 0])
    assert table.restore(rows, [0, -1]) == [0]  # the other column is one no SLO reads
    assert table.window(("chat", "", ""), total, total, t0, t0 + timedelta(hours=2)).total == 3


def test_selectors_match_the_same_series_with_covered_ones_dropped(store: ChdbStore) -> None:
    series = [(p, m, t) for p in ("a", "b", "c") for m in ("m1", "m2") for t in ("", "t1", "t2")]
    rows = ", ".join(f"('{p}', '{m}', '{t}')" for p, m, t in series)
    rng = random.Random(7)
    values = {0: ("", "a", "b", "c"), 1: ("", "m1", "m2"), 2: ("", "t1", "t2")}
    for _ in range(40):
        sels = {tuple(rng.choice(values[i]) for i in range(3)) for _ in range(rng.randint(1, 6))}
        params: dict[str, Any] = {}
        where = hours.selectors_sql(sels, params)  # type: ignore[arg-type]
        got = store.query(
            "SELECT pool, model, tenant FROM values('pool String, model String, tenant String',"
            f" {rows}) WHERE {where} ORDER BY pool, model, tenant",
            params,
        ).rows
        want = sorted(s for s in series if any(hours.matches(sel, s) for sel in sels))  # type: ignore[arg-type]
        assert got == want, sels
    # Covered selectors are dropped; pool-only ones become one IN.
    params = {}
    sels = [("a", "", ""), ("a", "m1", ""), ("b", "", "t1"), ("b", "m1", "t1"), ("c", "", ""),
            ("", "m2", ""), ("b", "m2", "t2")]  # fmt: skip
    sql = hours.selectors_sql(sels, params)
    assert sql == ("(pool IN {sel_pools:Array(String)} OR (model = {sel_m0:String})"
                   " OR (pool = {sel_p1:String} AND tenant = {sel_t1:String}))")  # fmt: skip
    assert params == {"sel_pools": ["a", "c"], "sel_m0": "m2", "sel_p1": "b", "sel_t1": "t1"}
