"""Clock-driven evaluation against a real embedded store with synthetic request rows.

The clock is anchored near real now (the raw table's TTL drops rows older than 30
days) at half past an hour, so windows cross hour boundaries and mix hourly and
per-minute rollups.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from alerts.signals import AlertSignal
from controlplane.clock import ManualClock, utc
from controlplane.errors import StoreUnavailable
from controlplane.slo import results
from controlplane.slo.evaluate import Evaluator, evaluate_slo
from controlplane.slo.spec import parse_slos
from controlplane.store.chdb_driver import ChdbStore

COLS = ["ts", "pool", "model", "tenant", "status", "ttft_us", "output_tokens_per_s"]


@pytest.fixture
def now() -> float:
    return (int(time.time()) // 3600 - 1) * 3600 + 30 * 60 + 7.0


class Recorder:
    """The alerts seam: keeps what each cycle hands over."""

    def __init__(self) -> None:
        self.cycles: list[tuple[float, list[AlertSignal]]] = []

    def process(self, signals: Sequence[AlertSignal], now: float) -> None:
        self.cycles.append((now, list(signals)))

    def active(self) -> set[tuple[str, str, str]]:
        _, last = self.cycles[-1]
        return {(s.labels["slo"], s.labels["alertname"], s.labels["tier"]) for s in last
                if s.active}  # fmt: skip


class SpyStore:
    """A real store that records its SQL and can refuse inserts like an outage."""

    def __init__(self, inner: ChdbStore) -> None:
        self.inner, self.sql, self.down = inner, list[str](), False
        self.driver, self.database = inner.driver, inner.database

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self.sql.append(sql)
        return self.inner.query(sql, params)

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self.sql.append(sql)
        return self.inner.query_df(sql, params)

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self.sql.append(sql)
        return self.inner.query_arrow(sql, params)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Any, **kw: Any) -> None:
        if self.down:
            raise StoreUnavailable("store unavailable: connection refused")
        self.inner.insert_rows(table, columns, rows, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def traffic(store: ChdbStore, now: float, minutes: range, per_min: int, bad: int = 0,
            pool: str = "chat", slow: int = 0) -> None:  # fmt: skip
    """``per_min`` requests in each minute ``m`` minutes before ``now`` (m in ``minutes``):
    ``bad`` of them errors, ``slow`` of the rest with TTFT 900 ms (others 200 ms)."""
    rows = []
    for m in minutes:
        t = utc(now - m * 60)
        for k in range(per_min):
            err = k < bad
            ttft = None if err else 900_000 if k < bad + slow else 200_000
            rows.append((t, pool, "llama", "acme", "error" if err else "ok", ttft, 50.0))
    store.insert_rows("requests", COLS, rows)


def _slos(*specs: dict[str, Any]) -> list[Any]:
    return parse_slos({"slos": list(specs)}, "test.yaml")


AVAIL = {"name": "avail", "selector": {"pool": "chat"}, "sli": {"kind": "availability"},
         "objective": 99.9, "window": "30d", "alerting": {"min_events": 100}}  # fmt: skip


def test_a_fast_burn_pages_once_then_resolves_after_errors_stop(store: ChdbStore, now) -> None:
    traffic(store, now, range(12, 1500), per_min=20)  # 25 h of healthy history
    traffic(store, now, range(2, 12), per_min=20, bad=2)  # 10 min of 10% errors just now
    rec, clock = Recorder(), ManualClock(now)
    spec = {
        **AVAIL,
        "alerting": {
            "min_events": 100,
            "tiers": [
                {"name": "fast", "severity": "page", "long": "1h", "short": "5m", "factor": 14.4},
                {
                    "name": "slow",
                    "severity": "ticket",
                    "long": "6h",
                    "short": "30m",
                    "factor": 2,
                    "for": "5m",
                },
            ],
        },
    }
    ev = Evaluator(store, _slos(spec), clock=clock, external_url="http://gov:8080",
                   alerts=lambda: rec)  # fmt: skip
    (r,) = ev.run_once()
    # each tier's signal carries its own hold time (``for``) to the alert lifecycle
    holds = {s.labels["tier"]: s.for_s for s in rec.cycles[-1][1] if "tier" in s.labels}
    assert holds == {"fast": 0.0, "slow": 300.0, "budget": 0.0, "no-data": 0.0}
    # 1h window (minutes 2..61; minute 1 is inside the 1m offset): 20 bad of 1200
    assert r.burn_rates["1h"] == pytest.approx(20 / 1200 / 0.001)
    assert r.burn_rates["5m"] == pytest.approx(100.0)
    assert r.burn_rates["6h"] == pytest.approx(20 / 7200 / 0.001)
    assert r.state == "burning"
    assert r.budget_remaining == pytest.approx(1 - (20 / 29960) / 0.001)
    # both tiers' conditions hold; only the faster is reported
    assert [t.active for t in r.tiers] == [True, True]
    assert r.shown_active == (True, False)
    assert rec.active() == {("avail", "SLOErrorBudgetBurn", "fast")}
    sig = next(s for s in rec.cycles[-1][1] if s.active)
    assert sig.labels == {"alertname": "SLOErrorBudgetBurn", "slo": "avail", "pool": "chat",
                          "severity": "page", "tier": "fast"}  # fmt: skip
    assert sig.annotations["console_url"] == "http://gov:8080/slos/avail"
    assert "burning its error budget" in sig.annotations["summary"]
    assert sig.value == pytest.approx(r.burn_rates["1h"])
    # Errors stop; 10 minutes later the 5m window is clean: the page clears, and the
    # slower tier (whose windows still hold the errors) takes over.
    clock.advance(600)
    traffic(store, clock.now(), range(0, 12), per_min=20)
    (r2,) = ev.run_once()
    assert r2.burn_rates["5m"] == 0.0
    assert [t.active for t in r2.tiers] == [False, True]
    assert rec.active() == {("avail", "SLOErrorBudgetBurn", "slow")}
    assert len(rec.cycles) == 2 and rec.cycles[1][0] == clock.now()


def test_evaluation_offset_ignores_the_newest_minute(store: ChdbStore, now) -> None:
    traffic(store, now, range(2, 120), per_min=50)
    traffic(store, now, range(0, 1), per_min=50, bad=50)  # the current minute: all errors
    spec = {**AVAIL, "alerting": {"offset": "1m", "min_events": 10}}
    (r,) = Evaluator(store, _slos(spec), clock=ManualClock(now)).run_once()
    assert r.burn_rates["5m"] == 0.0 and r.state == "ok"
    assert r.until == utc(now - 60).replace(second=0)
    spec0 = {**AVAIL, "name": "no-offset", "alerting": {"offset": "0s", "min_events": 10}}
    (r0,) = Evaluator(store, _slos(spec0), clock=ManualClock(now + 60)).run_once()
    assert r0.burn_rates["5m"] > 0


def test_few_events_are_insufficient_data_not_zero_or_hundred_percent(
    store: ChdbStore, now
) -> None:
    traffic(store, now, range(2, 5), per_min=3, bad=3)  # 9 requests, all failed
    rec = Recorder()
    (r,) = Evaluator(store, _slos({**AVAIL, "alerting": {"min_events": 10}}),
                     clock=ManualClock(now), alerts=lambda: rec).run_once()  # fmt: skip
    assert r.state == "insufficient_data"
    assert r.sli is None and r.budget_remaining is None and r.time_to_exhaustion_s is None
    assert (r.good, r.total) == (0, 9)
    assert rec.active() == set()  # 100% errors on 9 requests pages nobody
    # A 10th request: exactly min_events is enough to judge (and page).
    traffic(store, now, range(5, 6), per_min=1, bad=1)
    (r,) = Evaluator(store, _slos({**AVAIL, "alerting": {"min_events": 10}}),
                     clock=ManualClock(now), alerts=lambda: rec).run_once()  # fmt: skip
    assert (r.good, r.total, r.sli) == (0, 10, 0.0)
    assert r.state == "exhausted" and r.budget_remaining is not None


def test_no_recent_events_is_an_explicit_no_data_state_and_alert(store: ChdbStore, now) -> None:
    traffic(store, now, range(30, 300), per_min=20)  # traffic stopped 30 min ago
    rec = Recorder()
    slos = _slos(
        {**AVAIL, "alerting": {"no_data": {"after": "15m", "severity": "page"}}},
        {**AVAIL, "name": "empty", "selector": {"pool": "nothing"}},
    )
    by = {r.slo: r for r in Evaluator(store, slos, clock=ManualClock(now),
                                      alerts=lambda: rec).run_once()}  # fmt: skip
    assert by["avail"].state == "no_data" and by["avail"].sli == 1.0  # window data still shown
    assert by["empty"].state == "no_data" and by["empty"].total == 0 and by["empty"].sli is None
    assert ("avail", "SLONoData", "no-data") in rec.active()
    nd = next(s for s in rec.cycles[-1][1] if s.labels["alertname"] == "SLONoData"
              and s.labels["slo"] == "avail")  # fmt: skip
    assert nd.labels["severity"] == "page"


def test_an_exhausted_budget_raises_its_own_alert(store: ChdbStore, now) -> None:
    traffic(store, now, range(2, 600), per_min=10, bad=1)  # 10% errors for 10 hours
    rec = Recorder()
    spec = {**AVAIL, "objective": 99, "alerting": {"budget_exhausted": {"severity": "page"}}}
    (r,) = Evaluator(store, _slos(spec), clock=ManualClock(now), alerts=lambda: rec).run_once()
    assert r.state == "exhausted"
    assert r.budget_remaining == pytest.approx(1 - 0.1 / 0.01)
    assert r.time_to_exhaustion_s == 0.0
    assert ("avail", "SLOErrorBudgetExhausted", "budget") in rec.active()


def test_latency_sli_counts_exactly_what_a_raw_scan_counts(store: ChdbStore, now) -> None:
    traffic(store, now, range(2, 200), per_min=20, bad=1, slow=3)
    spec = {"name": "ttft", "selector": {"pool": "chat"}, "objective": 99, "window": "7d",
            "sli": {"kind": "latency", "metric": "ttft", "threshold_s": 0.5}}  # fmt: skip
    (r,) = Evaluator(store, _slos(spec), clock=ManualClock(now)).run_once()
    raw = store.query(
        "SELECT countIf(ttft_us <= 500000), count() FROM requests "
        "WHERE status = 'ok' AND ttft_us IS NOT NULL AND pool = 'chat' "
        "AND ts < {u:DateTime('UTC')}",
        {"u": r.until},
    ).rows[0]
    assert (r.good, r.total) == (raw[0], raw[1]) == (198 * 16, 198 * 19)
    # 3 slow of 19 per minute over the last hour (59 minutes after the offset)
    assert r.burn_rates["14m"] == pytest.approx((3 / 19) / 0.01)


def test_timeslices_count_bad_minutes(store: ChdbStore, now) -> None:
    traffic(store, now, range(8, 62), per_min=10)
    traffic(store, now, range(2, 8), per_min=10, bad=2)  # 6 minutes at 80% good
    spec = {
        **AVAIL,
        "objective": 99,
        "alerting": {"min_events": 1},
        "budgeting": {"method": "timeslices", "slice": "1m", "slice_target": 0.9},
    }
    (r,) = Evaluator(store, _slos(spec), clock=ManualClock(now)).run_once()
    assert (r.good, r.total) == (60 - 6, 60)  # minutes, not requests
    assert r.burn_rates["1h"] == pytest.approx((6 / 60) / 0.01)


def test_gauge_sli_counts_minutes_where_every_sample_meets_the_condition(
    store: ChdbStore, now
) -> None:
    rows = []
    for m in range(2, 32):
        for rep in ("r0", "r1"):
            for s in (0, 20, 40):
                kv = 0.95 if (rep == "r1" and m < 7 and s == 20) else 0.5
                rows.append((utc(now - m * 60 + s - 50), "chat", rep, "llama", True, kv))
    store.insert_rows("replica_samples", ["ts", "pool", "replica", "model", "up",
                                          "kv_cache_usage"], rows)  # fmt: skip
    spec = {"name": "kv", "selector": {"pool": "chat"}, "objective": 95, "window": "7d",
            "sli": {"kind": "gauge", "source": "replica_samples", "field": "kv_cache_usage",
                    "op": "<", "value": 0.9}, "budgeting": "timeslices",
            "alerting": {"min_events": 1}}  # fmt: skip
    (r,) = Evaluator(store, _slos(spec), clock=ManualClock(now)).run_once()
    assert (r.good, r.total) == (25, 30)


def test_results_are_written_and_a_store_outage_loses_none(store: ChdbStore, now) -> None:
    traffic(store, now, range(2, 60), per_min=20)
    spy = SpyStore(store)
    clock = ManualClock(now)
    ev = Evaluator(spy, _slos(AVAIL), clock=clock)  # type: ignore[arg-type]
    ev.run_once()
    spy.down = True
    clock.advance(10)
    ev.run_once()
    assert ev.pending_rows == 1
    spy.down = False
    clock.advance(10)
    ev.run_once()
    assert ev.pending_rows == 0
    hist = results.history(store, "avail", utc(now - 1), utc(now + 60))
    assert [h["ts"] for h in hist] == [
        utc(now + d).isoformat().replace("+00:00", "Z") for d in (0, 10, 20)
    ]
    assert hist[0]["state"] == "ok" and hist[0]["burn_rates"]["1h"] == 0.0
    latest = results.latest(store)
    assert latest["avail"]["ts"] == hist[-1]["ts"] and latest["avail"]["tiers"][0]["long"] == "1h"


def test_the_sli_path_reads_rollups_never_raw_requests(store: ChdbStore, now) -> None:
    traffic(store, now, range(2, 30), per_min=5)
    spy = SpyStore(store)
    slos = _slos(
        AVAIL,
        {**AVAIL, "name": "lat", "sli": {"kind": "latency", "metric": "e2e", "threshold_s": 2}},
        {**AVAIL, "name": "tps", "sli": {"kind": "throughput", "floor_tokens_per_s": 10}},
        {**AVAIL, "name": "slices", "budgeting": {"method": "timeslices", "slice": "5m"}},
    )
    ev = Evaluator(spy, slos, clock=ManualClock(now))  # type: ignore[arg-type]
    ev.run_once()
    # every cycle: the held hours' check, one statement reading the edge minutes of the
    # three occurrences SLOs (and on the first cycle 30 days of hours), one query for the
    # time-slice SLO; whatever the number of SLOs and windows. The first cycle also
    # looks up hours saved by an earlier process (one query; no schema version query).
    saved = [q for q in spy.sql if "slo_hour_state" in q or "schema_migrations" in q]
    assert len(saved) == 1
    assert len(spy.sql) == 1 + 3
    ev.run_once()
    assert len(spy.sql) == 1 + 3 + 3
    for sql in spy.sql:
        if sql in saved:
            continue
        assert not re.search(r"\bFROM\s+requests\b(?!_)", sql), sql
        assert "requests_1m" in sql or "requests_1h" in sql


def test_calendar_month_window_starts_at_the_month(store: ChdbStore) -> None:
    # A fixed instant 2.5 h into a month: the next one, so that no row is older than the
    # raw table's 30-day TTL whatever the day the test runs.
    first = utc(time.time()).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (first + timedelta(days=32)).replace(day=1)
    now = (start + timedelta(hours=2, minutes=30, seconds=7)).timestamp()
    before = (start - timedelta(minutes=30)).timestamp()
    traffic(store, before, range(0, 10), per_min=10, bad=10)  # last month: all errors
    traffic(store, now, range(2, 60), per_min=10)  # this month: all good
    spec = {**AVAIL, "window": "month", "alerting": {"min_events": 1}}
    (r,) = Evaluator(store, _slos(spec), clock=ManualClock(now)).run_once()
    assert r.window == "month"
    assert (r.good, r.total) == (580, 580)  # none of last month's errors
    assert r.until == utc(now - 60).replace(second=0)


def test_one_batched_cycle_equals_evaluating_each_slo_alone(store: ChdbStore, now) -> None:
    traffic(store, now, range(2, 200), per_min=6, bad=1, slow=2)
    traffic(store, now, range(30, 90), per_min=3, bad=2, pool="other")
    lat = {"kind": "latency", "metric": "ttft", "threshold_s": 0.5}
    slos = _slos(
        AVAIL,
        {**AVAIL, "name": "all-pools", "selector": {}},
        {**AVAIL, "name": "other", "selector": {"pool": "other"}, "window": "7d"},
        {**AVAIL, "name": "tenant", "selector": {"pool": "chat", "tenant": "acme"}, "sli": lat},
        {**AVAIL, "name": "model", "selector": {"model": "llama"}, "sli": lat, "objective": 99},
        {**AVAIL, "name": "slow", "sli": {**lat, "threshold_s": 1.0}, "objective": 99},
        {**AVAIL, "name": "offset", "alerting": {"offset": "5m"}},
    )
    batch = {r.slo: r for r in Evaluator(store, slos, clock=ManualClock(now)).run_once()}
    for slo in slos:
        alone = evaluate_slo(store, slo, now)
        got = batch[slo.name]
        assert (got.good, got.total, got.burn_rates, got.state) == (
            alone.good, alone.total, alone.burn_rates, alone.state), slo.name  # fmt: skip
    assert batch["all-pools"].total == 198 * 6 + 60 * 3
    assert batch["other"].good == 60
