"""Per-request cost: API price tables and self-hosted GPU time, numbers worked by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.errors import PricingError
from collector.pricing import ModelPrice, PoolPrice, Pricer
from collector.records import RequestRecord
from controlplane.config import parse_config

T0 = datetime(2026, 11, 22, tzinfo=UTC)

MINI = ModelPrice("gpt-4o-mini*", 0.15, 0.60, 0.075)
FOUR_O = ModelPrice("gpt-4o*", 2.50, 10.00)
HAIKU = ModelPrice(r"claude-[0-9.-]+-haiku(-\d+)?", 0.80, 4.00, regex=True)
# 3.60 $/GPU-hour x 2 GPUs = 7.20 $/h = 0.002 $/s per replica.
CHAT = PoolPrice("chat", gpu_hour_usd=3.60, gpus_per_replica=2)


def req(**kw) -> RequestRecord:
    return RequestRecord(ts=T0, **kw)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        # (8000 uncached x 0.15 + 2000 cached x 0.075 + 1000 out x 0.60) / 1e6
        (req(model="gpt-4o-mini-2024-07-18", input_tokens=10_000, cached_tokens=2_000,
             output_tokens=1_000), 0.00195),
        # "gpt-4o-2024-..." does not match the mini entry: the plain gpt-4o price
        # (which entry wins when two match is the first case: mini is listed first)
        (req(model="gpt-4o-2024-08-06", input_tokens=1_000, output_tokens=100),
         (1_000 * 2.50 + 100 * 10.00) / 1e6),
        # no cached price: cached tokens cost the input price (10000 x 2.50 + 0)
        (req(model="gpt-4o", input_tokens=10_000, cached_tokens=4_000), 0.025),
        # glob matching ignores case
        (req(model="GPT-4o-Mini", output_tokens=1_000_000), 0.60),
        # regex entries must match the whole name
        (req(model="claude-3-5-haiku-20241022", input_tokens=1_000_000), 0.80),
        (req(model="my-claude-3-5-haiku", input_tokens=1_000_000), 0.0),
        # unknown model, or none: no price
        (req(model="mystery", input_tokens=5), 0.0),
        (req(input_tokens=5), 0.0),
    ],
    ids=[
        "cached input tokens are billed at the cached price",
        "a dated gpt-4o is not priced as the mini",
        "cached tokens fall back to the input price",
        "globs are case-insensitive",
        "a regex matching the whole name applies",
        "a regex matching only part of the name does not",
        "an unknown model costs nothing",
        "a record without a model costs nothing",
    ],
)  # fmt: skip
def test_api_requests_are_priced_per_token(record: RequestRecord, expected: float) -> None:
    pricer = Pricer([MINI, FOUR_O, HAIKU])
    assert pricer.request_cost(record) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("record", "concurrency", "input_usd", "output_usd"),
    [
        # 0.5 s prefill x 0.002 $/s, 2.0 s decode x 0.002 $/s
        (req(pool="chat", prefill_us=500_000, decode_us=2_000_000), None, 0.001, 0.004),
        # four requests share the replica: a quarter each
        (req(pool="chat", prefill_us=500_000, decode_us=2_000_000), 4.0, 0.00025, 0.001),
        # no engine timings: prefill = TTFT - queue = 0.5 s, decode = E2E - TTFT = 2.0 s
        (req(pool="chat", ttft_us=700_000, queue_us=200_000, e2e_us=2_700_000), None,
         0.001, 0.004),
        # a self-hosted pool is priced by GPU time even when the model has an API price
        (req(pool="chat", model="gpt-4o", input_tokens=10**6, prefill_us=1_000_000,
             decode_us=0), None, 0.002, 0.0),
        # concurrency below one (idle replica sample) never inflates the cost
        (req(pool="chat", prefill_us=500_000, decode_us=0), 0.25, 0.001, 0.0),
    ],
    ids=[
        "prefill time prices the input and decode time the output",
        "concurrent requests share the replica's cost",
        "phases are derived from TTFT and E2E when missing",
        "a self-hosted pool wins over an API price",
        "concurrency below one counts as one",
    ],
)  # fmt: skip
def test_self_hosted_requests_are_charged_their_share_of_gpu_time(
    record: RequestRecord, concurrency: float | None, input_usd: float, output_usd: float
) -> None:
    pricer = Pricer([FOUR_O], [CHAT], concurrency=lambda pool, replica: concurrency)
    cost = pricer.cost(record)
    assert cost.source == "gpu"
    assert cost.input_usd == pytest.approx(input_usd, rel=1e-12)
    assert cost.output_usd == pytest.approx(output_usd, rel=1e-12, abs=1e-15)
    assert pricer.request_cost(record) == pytest.approx(input_usd + output_usd, rel=1e-12)


def test_a_pool_without_a_gpu_price_falls_back_to_the_model_price() -> None:
    pricer = Pricer([FOUR_O], [PoolPrice("free", 0.0)])
    assert pricer.request_cost(req(pool="free", model="gpt-4o", output_tokens=1000)) == 0.01


def test_pricer_from_the_yaml_config_and_pools() -> None:
    cfg = parse_config({
        "pools": [{"name": "chat", "model": "llama", "gpu_hour_usd": 3.6, "gpus_per_replica": 2}],
        "pricing": {"models": [
            {"match": "gpt-4o-mini*", "input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6,
             "cached_input_usd_per_mtok": 0.075},
        ]},
    })  # fmt: skip
    pricer = Pricer.from_config(cfg.pricing, cfg.pools)
    assert pricer.pools == {"chat": CHAT}
    assert pricer.request_cost(
        req(model="gpt-4o-mini", input_tokens=10_000, cached_tokens=2_000, output_tokens=1_000)
    ) == pytest.approx(0.00195)
    same = Pricer.from_config(cfg.pricing.model_dump(), [p.model_dump() for p in cfg.pools])
    assert same.models == pricer.models and same.pools == pricer.pools


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}, "models\\[0\\]: missing 'match'"),
        ({"match": "x", "input_usd_per_mtok": -1, "output_usd_per_mtok": 1},
         "models\\[0\\].*input_per_mtok must be >= 0"),
        ({"match": "(", "regex": True, "input_usd_per_mtok": 1, "output_usd_per_mtok": 1},
         "models\\[0\\].*'\\(': invalid regex"),
        ({"match": "x", "input_usd_per_mtok": "cheap", "output_usd_per_mtok": 1},
         "models\\[0\\]"),
    ],
    ids=["a missing pattern", "a negative price", "a broken regex", "a price that is not a number"],
)  # fmt: skip
def test_bad_price_entries_are_refused_naming_the_entry(entry: dict, message: str) -> None:
    with pytest.raises(PricingError, match=message):
        Pricer.from_config({"models": [entry]})


def test_the_config_refuses_a_broken_regex_with_its_path() -> None:
    from controlplane.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pricing.models\[0\]: match '\(' is not a valid regex"):
        parse_config({"pricing": {"models": [
            {"match": "(", "regex": True, "input_usd_per_mtok": 1, "output_usd_per_mtok": 1},
        ]}})  # fmt: skip


@pytest.mark.parametrize(
    "kw",
    [{"gpu_hour_usd": -1.0}, {"gpu_hour_usd": float("nan")}, {"gpus_per_replica": 0}],
    ids=["a negative price", "a NaN price", "no GPUs per replica"],
)
def test_a_pool_price_must_be_sane(kw: dict[str, float]) -> None:
    with pytest.raises(PricingError, match="pool 'p': gpu_hour_usd must be >= 0"):
        PoolPrice("p", **{"gpu_hour_usd": 1.0, **kw})


def test_the_concurrency_tracker_shares_a_replica_among_its_running_requests() -> None:
    from collector.pricing import ConcurrencyTracker
    from collector.records import ListSink, ReplicaSample

    now = [100.0]
    downstream = ListSink()
    tracker = ConcurrencyTracker(downstream, max_age_s=60, clock=lambda: now[0])
    samples = [
        ReplicaSample(ts=T0, pool="chat", replica="r0", running=4.0),
        ReplicaSample(ts=T0, pool="chat", replica="r1", running=2.0, up=False),
    ]
    tracker.emit(samples)
    assert downstream.records == samples  # passes everything on
    pricer = Pricer([], [CHAT], concurrency=tracker)
    r0 = req(pool="chat", replica="r0", prefill_us=500_000, decode_us=2_000_000)
    r1 = req(pool="chat", replica="r1", prefill_us=500_000, decode_us=2_000_000)
    assert pricer.request_cost(r0) == pytest.approx(0.005 / 4)
    assert pricer.request_cost(r1) == pytest.approx(0.005)  # a down replica's gauge is ignored
    now[0] += 61
    assert pricer.request_cost(r0) == pytest.approx(0.005)  # stale: as if alone
