"""Cost per 1K tokens over a window, on both bases, with every expected number worked by hand.

The fixture fleet, window [00:00, 01:00) on 2026-11-22:

* pool ``chat`` (self-hosted): 2.00 $/GPU-hour x 2 GPUs per replica. Two replicas,
  scraped every 15 s for minutes 0-9 (4 samples a minute each):
  - ``r0``: requests running in minutes 0-4 (busy 5 minutes), in two of the four
    samples of minute 5 (busy 0.5), idle in minutes 6-9;
  - ``r1``: idle throughout; its minute-9 samples say running=3 but ``up`` is false,
    so they count as provisioned, never as busy.
  Allocation: 20 replica-minutes = 1/3 replica-hour = 2/3 GPU-hour = $1.333333.
  Usage: 5.5 busy replica-minutes = 5.5/60 x 2 GPU-hours = 0.183333 GPU-hour = $0.366667.
* Requests in ``chat``: tenant A, 3 x (1000 in, 500 out, prefill 0.2 s, decode 1.0 s);
  tenant B, 1 x (3000 in, 500 out, TTFT 0.7 s of which queue 0.1 s, E2E 2.5 s, so
  prefill 0.6 s and decode 1.8 s). Pool GPU time: prefill 1.2 s + decode 4.8 s = 6.0 s.
* pool ``api`` (no GPU price): 2 requests of gpt-4o-mini, 10000 in / 1000 out, priced
  at ingest at $0.00195 each.
* Outside the window: one ``chat`` request at 02:00, and replica samples at 01:00.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from collector.records import ReplicaSample, RequestRecord, as_row, columns
from controlplane.api.app import create_app
from controlplane.api.auth import TokenAuth
from controlplane.config import parse_config
from controlplane.cost import cost_report, pool_prices
from controlplane.errors import QueryError
from controlplane.server import build_context
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import migrate
from controlplane.store.rollups import Selector

T0 = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
CONFIG = parse_config({"pools": [
    {"name": "chat", "model": "llama", "gpu_hour_usd": 2.0, "gpus_per_replica": 2},
    {"name": "idle", "model": "llama", "gpu_hour_usd": 5.0},
]})  # fmt: skip
PRICES = pool_prices(CONFIG.pools)
VIEWER = "viewer-token-0123456789"


def _samples() -> list[ReplicaSample]:
    out = []
    for minute in range(10):
        for k in range(4):
            ts = T0 + timedelta(minutes=minute, seconds=15 * k)
            r0_running = 2.0 if minute < 5 or (minute == 5 and k < 2) else 0.0
            out.append(ReplicaSample(ts=ts, pool="chat", replica="r0", running=r0_running,
                                     waiting=0.0))  # fmt: skip
            down = minute == 9
            out.append(ReplicaSample(ts=ts, pool="chat", replica="r1", up=not down,
                                     running=3.0 if down else 0.0, waiting=None))  # fmt: skip
    out.append(ReplicaSample(ts=T1, pool="chat", replica="r0", running=5.0))  # outside
    return out


def _requests() -> list[RequestRecord]:
    a = [
        RequestRecord(ts=T0 + timedelta(minutes=i), pool="chat", model="llama", tenant="A",
                      input_tokens=1000, output_tokens=500, prefill_us=200_000,
                      decode_us=1_000_000)
        for i in range(3)
    ]  # fmt: skip
    b = RequestRecord(ts=T0 + timedelta(minutes=4), pool="chat", model="llama", tenant="B",
                      input_tokens=3000, output_tokens=500, ttft_us=700_000, queue_us=100_000,
                      e2e_us=2_500_000)  # fmt: skip
    api = [
        RequestRecord(ts=T0 + timedelta(minutes=30 + i), pool="api", model="gpt-4o-mini",
                      tenant="A", input_tokens=10_000, output_tokens=1_000, cost_usd=0.00195)
        for i in range(2)
    ]  # fmt: skip
    late = RequestRecord(
        ts=T0 + timedelta(hours=2),
        pool="chat",
        model="llama",
        tenant="A",
        input_tokens=99,
        output_tokens=99,
        prefill_us=9,
        decode_us=9,
    )
    return [*a, b, *api, late]


@pytest.fixture(scope="module")
def fleet(chdb_path) -> Iterator[ChdbStore]:
    """One migrated database for the module: these tests only read it."""
    s = ChdbStore(chdb_path, database=f"t_{uuid.uuid4().hex[:12]}")
    try:
        migrate(s)
        s.insert_rows("replica_samples", columns(ReplicaSample), [as_row(x) for x in _samples()])
        s.insert_rows("requests", columns(RequestRecord), [as_row(r) for r in _requests()])
        yield s
    finally:
        s.command(f"DROP DATABASE IF EXISTS {s.database}")
        s.close()


ALLOC_USD = 20 / 60 * 2 * 2.0  # replica-minutes -> GPU-hours -> $
USAGE_USD = 5.5 / 60 * 2 * 2.0


@pytest.mark.parametrize(
    ("basis", "sel", "expected"),
    [
        ("allocation", Selector("chat"), dict(
            requests=4, input_tokens=6000, output_tokens=2000, gpu_hours=2 / 3,
            input_cost_usd=ALLOC_USD * 1.2 / 6.0, output_cost_usd=ALLOC_USD * 4.8 / 6.0,
            cost_per_1k_tokens=ALLOC_USD / 8000 * 1000)),
        ("usage", Selector("chat"), dict(
            requests=4, gpu_hours=5.5 / 60 * 2, input_cost_usd=USAGE_USD * 0.2,
            output_cost_usd=USAGE_USD * 0.8, cost_per_1k_tokens=USAGE_USD / 8)),
        # tenant A used 0.6 + 3.0 = 3.6 s of the pool's 6.0 s; its own split is 0.6 : 3.0
        ("allocation", Selector("chat", tenant="A"), dict(
            requests=3, input_tokens=3000, output_tokens=1500, gpu_hours=2 / 3 * 0.6,
            input_cost_usd=ALLOC_USD * 0.6 * (0.6 / 3.6),
            output_cost_usd=ALLOC_USD * 0.6 * (3.0 / 3.6),
            cost_per_1k_tokens=ALLOC_USD * 0.6 / 4.5,
            input_cost_per_1k_tokens=ALLOC_USD * 0.1 / 3,
            output_cost_per_1k_tokens=ALLOC_USD * 0.5 / 1.5)),
        # tenant B: 2.4 s of 6.0 s; split 0.6 : 1.8 from its TTFT/E2E
        ("usage", Selector("chat", tenant="B"), dict(
            requests=1, input_tokens=3000, output_tokens=500,
            input_cost_usd=USAGE_USD * 0.4 * 0.25, output_cost_usd=USAGE_USD * 0.4 * 0.75)),
        # API pool: stored per-request costs, split by tokens; the basis does not matter
        ("usage", Selector("api"), dict(
            requests=2, input_tokens=20_000, output_tokens=2_000, gpu_hours=None,
            input_cost_usd=0.0039 * 20 / 22, output_cost_usd=0.0039 * 2 / 22,
            cost_per_1k_tokens=0.0039 / 22)),
    ],
    ids=[
        "allocation charges every provisioned replica-minute",
        "usage charges only busy replica time",
        "a tenant pays its share of the pool by its requests' GPU time",
        "a tenant's cost splits into input and output by prefill vs decode time",
        "an API pool sums the prices charged per request",
    ],
)  # fmt: skip
def test_cost_of_one_pool(fleet, basis, sel, expected) -> None:
    (line,) = cost_report(fleet, PRICES, sel, T0, T1, basis).lines
    d = line.as_dict()
    for key, want in expected.items():
        if want is None or isinstance(want, int):
            assert d[key] == want, key
        else:
            assert d[key] == pytest.approx(want, rel=1e-6), key


def test_all_pools_are_listed_and_totalled(fleet) -> None:
    report = cost_report(fleet, PRICES, Selector(), T0, T1, "allocation")
    assert [ln.pool for ln in report.lines] == ["api", "chat"]  # "idle" has no samples
    total = report.total
    assert total.requests == 6
    assert total.cost_usd == pytest.approx(ALLOC_USD + 0.0039, rel=1e-6)
    assert total.cost_per_1k_tokens == pytest.approx((ALLOC_USD + 0.0039) / 30, rel=1e-6)
    assert total.gpu_hours == pytest.approx(2 / 3)


def test_usage_never_exceeds_allocation(fleet) -> None:
    alloc = cost_report(fleet, PRICES, Selector("chat"), T0, T1, "allocation").total
    usage = cost_report(fleet, PRICES, Selector("chat"), T0, T1, "usage").total
    assert 0 < usage.cost_usd < alloc.cost_usd


def test_an_idle_window_costs_the_provisioned_replicas_but_has_no_per_token_figure(store) -> None:
    store.insert_rows("replica_samples", columns(ReplicaSample), [
        as_row(ReplicaSample(ts=T0 + timedelta(minutes=m), pool="idle", replica="x", running=0.0))
        for m in range(30)
    ])  # fmt: skip
    alloc = cost_report(store, PRICES, Selector("idle"), T0, T1, "allocation")
    (line,) = alloc.lines
    assert line.cost_usd == pytest.approx(30 / 60 * 5.0)
    assert line.cost_per_1k_tokens is None
    assert cost_report(store, PRICES, Selector("idle"), T0, T1, "usage").lines == []


def test_without_any_timings_a_tenants_share_and_split_follow_its_tokens(store) -> None:
    """Producers that report tokens but no phase timings: the pool's cost is shared by
    tokens, and each share splits into input and output by tokens too."""
    store.insert_rows("replica_samples", columns(ReplicaSample), [as_row(x) for x in _samples()])
    untimed = [
        RequestRecord(ts=T0 + timedelta(minutes=i), pool="chat", model="llama", tenant=t,
                      input_tokens=tin, output_tokens=tout)
        for i, (t, tin, tout) in enumerate([("A", 1000, 500)] * 3 + [("B", 3000, 500)])
    ]  # fmt: skip
    store.insert_rows("requests", columns(RequestRecord), [as_row(r) for r in untimed])
    (a,) = cost_report(store, PRICES, Selector("chat", tenant="A"), T0, T1, "allocation").lines
    # A: 4,500 of the pool's 8,000 tokens; its own 3,000 in : 1,500 out
    assert a.cost_usd == pytest.approx(ALLOC_USD * 4500 / 8000, rel=1e-6)
    assert a.input_cost_usd == pytest.approx(ALLOC_USD * 3000 / 8000, rel=1e-6)
    assert a.output_cost_usd == pytest.approx(ALLOC_USD * 1500 / 8000, rel=1e-6)
    assert a.gpu_hours == pytest.approx(2 / 3 * 4500 / 8000, rel=1e-6)


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"basis": "cheapest"}, "basis must be one of"), ({"until": T0}, "empty window")],
    ids=["an unknown basis", "an empty window"],
)
def test_bad_questions_are_refused_with_a_reason(store, kw, message) -> None:
    args = {"basis": "usage", "until": T1} | kw
    with pytest.raises(QueryError, match=message):
        cost_report(store, PRICES, Selector(), T0, args["until"], args["basis"])


@pytest.fixture
def client(fleet, clock) -> Iterator[TestClient]:
    clock.set(T1.timestamp())
    ctx = build_context(CONFIG, fleet, TokenAuth.parse(f"viewer:{VIEWER}"), clock=clock,
                        builders=[])  # fmt: skip
    with TestClient(create_app(ctx)) as c:
        yield c


def test_the_api_answers_cost_per_1k_tokens_for_a_tenant(client) -> None:
    r = client.get(
        "/api/v1/cost",
        params={"pool": "chat", "tenant": "A", "since": T0.isoformat(),
                "until": str(int(T1.timestamp())), "basis": "allocation"},
        headers={"Authorization": f"Bearer {VIEWER}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["basis"] == "allocation" and body["tenant"] == "A"
    assert body["since"] == "2026-11-22T00:00:00+00:00" and body["until"] == T1.isoformat()
    assert body["total"]["cost_per_1k_tokens"] == pytest.approx(ALLOC_USD * 0.6 / 4.5, rel=1e-6)
    assert body["lines"][0]["gpu_hours"] == pytest.approx(0.4)


def test_the_api_defaults_to_the_last_day_on_the_allocation_basis(client) -> None:
    r = client.get("/api/v1/cost", headers={"Authorization": f"Bearer {VIEWER}"})
    assert r.status_code == 200
    body = r.json()
    assert body["basis"] == "allocation"
    assert body["total"]["cost_usd"] == pytest.approx(ALLOC_USD + 0.0039, rel=1e-6)


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"basis": "cheapest"}, 400, "basis"),
        ({"since": "yesterday"}, 400, "since"),
        ({"since": T1.isoformat(), "until": T0.isoformat()}, 400, "window"),
    ],
    ids=["an unknown basis", "an unreadable time", "a window that ends before it starts"],
)
def test_the_api_rejects_bad_parameters_with_a_message(client, params, status, message) -> None:
    r = client.get("/api/v1/cost", params=params, headers={"Authorization": f"Bearer {VIEWER}"})
    assert r.status_code == status
    assert message in r.text


def test_the_api_needs_a_token(client) -> None:
    assert client.get("/api/v1/cost").status_code == 401
