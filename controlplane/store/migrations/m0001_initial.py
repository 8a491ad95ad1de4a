"""Initial schema: raw tables, per-minute and per-hour request rollups.

Latency histograms in the rollups are ``Map(bucket_upper_us, count)`` where the bucket
bound is the latency rounded *up* to two significant digits (exact below 100 us). So a
good/total SLI for any threshold with two significant digits (250 ms, 1.5 s, 35 ms...)
is exact from the rollups; other thresholds are rounded down to the nearest bound.
Throughput histograms key output tokens/s x1000 rounded *down* to two significant digits,
so "at or above a floor" is exact for such floors.
"""

from __future__ import annotations


def _round_up_2sig(expr: str) -> str:
    # Integer arithmetic on purpose: float log10/division would misplace exact bounds.
    e = f"toUInt64(ifNull({expr}, 0))"
    p = (
        f"multiIf({e} < 100, 1, {e} < 1000, 10, {e} < 10000, 100, {e} < 100000, 1000, "
        f"{e} < 1000000, 10000, {e} < 10000000, 100000, {e} < 100000000, 1000000, "
        f"{e} < 1000000000, 10000000, 100000000)"
    )
    return f"toUInt32(intDiv({e} + {p} - 1, {p}) * {p})"


def _round_down_2sig(expr: str) -> str:
    e = f"toUInt64(ifNull({expr}, 0))"
    p = (
        f"multiIf({e} < 100, 1, {e} < 1000, 10, {e} < 10000, 100, {e} < 100000, 1000, "
        f"{e} < 1000000, 10000, {e} < 10000000, 100000, 1000000)"
    )
    return f"toUInt32(intDiv({e}, {p}) * {p})"


def _hist(col: str) -> str:
    # Latency histograms count successful requests that reported the value.
    return f"sumMapIf(map({_round_up_2sig(col)}, toUInt64(1)), status = 'ok' AND {col} IS NOT NULL)"


_TPS_HIST = (
    "sumMapIf(map("
    + _round_down_2sig("least(output_tokens_per_s, 4000000) * 1000")
    + ", toUInt64(1)), status = 'ok' AND output_tokens_per_s IS NOT NULL)"
)

_HIST_TYPE = "SimpleAggregateFunction(sumMap, Map(UInt32, UInt64))"


def _rollup_table(name: str, bucket: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    {bucket} DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
    pool LowCardinality(String),
    model LowCardinality(String),
    tenant LowCardinality(String),
    requests SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    ttft_hist {_HIST_TYPE},
    tpot_hist {_HIST_TYPE},
    e2e_hist {_HIST_TYPE},
    queue_hist {_HIST_TYPE},
    tps_hist {_HIST_TYPE},
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cached_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Decimal128(9))
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM({bucket})
ORDER BY (pool, model, tenant, {bucket})
TTL {bucket} + INTERVAL 400 DAY
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000
"""


def _rollup_view(name: str, target: str, bucket: str, fn: str) -> str:
    return f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {name} TO {target} AS
SELECT
    {fn}(ts) AS {bucket}, pool, model, tenant,
    count() AS requests,
    countIf(status = 'error') AS errors,
    {_hist("ttft_us")} AS ttft_hist,
    {_hist("tpot_us")} AS tpot_hist,
    {_hist("e2e_us")} AS e2e_hist,
    {_hist("queue_us")} AS queue_hist,
    {_TPS_HIST} AS tps_hist,
    sum(toUInt64(input_tokens)) AS input_tokens,
    sum(toUInt64(output_tokens)) AS output_tokens,
    sum(toUInt64(cached_tokens)) AS cached_tokens,
    sum(toDecimal128(cost_usd, 9)) AS cost_usd
FROM requests
GROUP BY {bucket}, pool, model, tenant
"""


STATEMENTS: list[str] = [
    """
CREATE TABLE IF NOT EXISTS requests (
    ts DateTime64(6, 'UTC') CODEC(Delta, T64, ZSTD(1)),
    pool LowCardinality(String),
    model LowCardinality(String),
    replica LowCardinality(String),
    tenant LowCardinality(String),
    priority LowCardinality(String),
    status LowCardinality(String),
    error_type LowCardinality(String),
    finish_reason LowCardinality(String),
    trace_id FixedString(16) CODEC(NONE),
    span_id FixedString(8) CODEC(NONE),
    ttft_us Nullable(UInt32) CODEC(T64, ZSTD(1)),
    tpot_us Nullable(UInt32) CODEC(T64, ZSTD(1)),
    e2e_us Nullable(UInt32) CODEC(T64, ZSTD(1)),
    queue_us Nullable(UInt32) CODEC(T64, ZSTD(1)),
    prefill_us Nullable(UInt32) CODEC(T64, ZSTD(1)),
    decode_us Nullable(UInt32) CODEC(T64, ZSTD(1)),
    input_tokens UInt32 CODEC(T64, ZSTD(1)),
    output_tokens UInt32 CODEC(T64, ZSTD(1)),
    cached_tokens UInt32 CODEC(T64, ZSTD(1)),
    output_tokens_per_s Nullable(Float32) CODEC(ZSTD(1)),
    cost_usd Decimal64(9) CODEC(T64, ZSTD(1)),
    attributes Map(LowCardinality(String), String) CODEC(ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (pool, model, ts)
TTL toDateTime(ts) + INTERVAL 30 DAY
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000
""",
    _rollup_table("requests_1m", "minute"),
    _rollup_table("requests_1h", "hour"),
    _rollup_view("requests_1m_mv", "requests_1m", "minute", "toStartOfMinute"),
    _rollup_view("requests_1h_mv", "requests_1h", "hour", "toStartOfHour"),
    """
CREATE TABLE IF NOT EXISTS gpu_samples (
    ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    node LowCardinality(String),
    gpu UInt16,
    uuid LowCardinality(String),
    name LowCardinality(String),
    mig_profile LowCardinality(String),
    pool LowCardinality(String),
    replica LowCardinality(String),
    source LowCardinality(String),
    healthy Bool,
    utilization Nullable(Float32) CODEC(ZSTD(1)),
    memory_used_bytes Nullable(UInt64) CODEC(T64, ZSTD(1)),
    memory_total_bytes Nullable(UInt64) CODEC(T64, ZSTD(1)),
    power_w Nullable(Float32) CODEC(ZSTD(1)),
    power_limit_w Nullable(Float32) CODEC(ZSTD(1)),
    energy_j Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    temperature_c Nullable(Float32) CODEC(ZSTD(1)),
    memory_temperature_c Nullable(Float32) CODEC(ZSTD(1)),
    sm_clock_mhz Nullable(Float32) CODEC(ZSTD(1)),
    memory_clock_mhz Nullable(Float32) CODEC(ZSTD(1)),
    clock_event_reasons Nullable(UInt64) CODEC(ZSTD(1)),
    ecc_uncorrected Nullable(UInt64) CODEC(ZSTD(1)),
    remapped_rows_pending Nullable(UInt32) CODEC(ZSTD(1)),
    last_xid Nullable(UInt32) CODEC(ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (node, gpu, ts)
TTL toDateTime(ts) + INTERVAL 30 DAY
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000
""",
    """
CREATE TABLE IF NOT EXISTS replica_samples (
    ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    pool LowCardinality(String),
    replica LowCardinality(String),
    model LowCardinality(String),
    engine LowCardinality(String),
    up Bool,
    running Nullable(Float32) CODEC(ZSTD(1)),
    waiting Nullable(Float32) CODEC(ZSTD(1)),
    kv_cache_usage Nullable(Float32) CODEC(ZSTD(1)),
    prompt_tokens_per_s Nullable(Float32) CODEC(ZSTD(1)),
    generation_tokens_per_s Nullable(Float32) CODEC(ZSTD(1)),
    preemptions_per_s Nullable(Float32) CODEC(ZSTD(1)),
    prefix_cache_hit_rate Nullable(Float32) CODEC(ZSTD(1)),
    scrape_duration_s Nullable(Float32) CODEC(ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (pool, replica, ts)
TTL toDateTime(ts) + INTERVAL 30 DAY
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000
""",
    """
CREATE TABLE IF NOT EXISTS actions (
    ts DateTime64(3, 'UTC'),
    action_id String,
    pool LowCardinality(String),
    replica LowCardinality(String),
    kind LowCardinality(String),
    mode LowCardinality(String),
    actor LowCardinality(String),
    reason String,
    params String,
    inputs String,
    error String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (pool, ts)
TTL toDateTime(ts) + INTERVAL 400 DAY
SETTINGS ttl_only_drop_parts = 1
""",
    """
CREATE TABLE IF NOT EXISTS alert_events (
    ts DateTime64(3, 'UTC'),
    fingerprint String,
    alertname LowCardinality(String),
    state LowCardinality(String),
    severity LowCardinality(String),
    slo LowCardinality(String),
    pool LowCardinality(String),
    labels Map(LowCardinality(String), String),
    annotations Map(LowCardinality(String), String),
    starts_at DateTime64(3, 'UTC'),
    ends_at Nullable(DateTime64(3, 'UTC')),
    value Nullable(Float64)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (fingerprint, ts)
TTL toDateTime(ts) + INTERVAL 400 DAY
SETTINGS ttl_only_drop_parts = 1
""",
    """
CREATE TABLE IF NOT EXISTS slo_evaluations (
    ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    slo LowCardinality(String),
    pool LowCardinality(String),
    state LowCardinality(String),
    sli Nullable(Float64),
    good UInt64,
    total UInt64,
    objective Float64,
    budget_remaining Nullable(Float64),
    burn_rates Map(LowCardinality(String), Float64),
    detail String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (slo, ts)
TTL toDateTime(ts) + INTERVAL 400 DAY
SETTINGS ttl_only_drop_parts = 1
""",
]
