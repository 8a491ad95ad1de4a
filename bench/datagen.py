"""Generate realistic ``requests`` rows inside the engine (``INSERT ... SELECT FROM numbers``).

Distributions (per request): TTFT lognormal around 180 ms, time per output token
lognormal around 22 ms, input tokens lognormal (median ~900), output tokens lognormal
(median ~180), 0.5% errors, queue time exponential (mean 15 ms) with occasional
bursts, tenants Zipf-like, trace/span ids random. Rows flow through the materialized
views like real inserts, so rollups are filled too.

    python -m bench.datagen --dir bench/data/req100m --rows 100000000 --days 28
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from controlplane.store.base import Store

POOLS = [
    "chat-8b", "chat-70b", "code-70b", "embed-small",
    "rag-8b", "batch-70b", "agent-8b", "vision-11b",
]  # fmt: skip
MODELS = {
    "chat-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "chat-70b": "meta-llama/Llama-3.1-70B-Instruct",
    "code-70b": "Qwen/Qwen2.5-Coder-32B-Instruct",
    "embed-small": "BAAI/bge-small-en-v1.5",
    "rag-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "batch-70b": "meta-llama/Llama-3.3-70B-Instruct",
    "agent-8b": "Qwen/Qwen2.5-7B-Instruct",
    "vision-11b": "meta-llama/Llama-3.2-11B-Vision-Instruct",
}


def _array(values: list[str]) -> str:
    return "[" + ",".join("'" + v.replace("'", "") + "'" for v in values) + "]"


def insert_sql(pools: list[str], tenants: int) -> str:
    models = [MODELS.get(p, "model-" + p) for p in pools]
    # {start:UInt64} offsets `number` so chunks get distinct ids and times.
    return f"""
INSERT INTO requests
SELECT
    toDateTime64(
        {{t0:Float64}} + (number * {{span:Float64}} / {{n:Float64}}) + rand(1) % 1000 / 1000.0,
        6, 'UTC') AS ts,
    {_array(pools)}[1 + cityHash64(number, 7) % {len(pools)}] AS pool,
    {_array(models)}[1 + cityHash64(number, 7) % {len(pools)}] AS model,
    concat(pool, '-', toString(cityHash64(number, 11) % 8)) AS replica,
    concat('tenant-', toString(toUInt32(pow(rand(2) / 4294967295.0, 3) * {tenants}))) AS tenant,
    if(rand(3) % 10 < 7, 'interactive', 'batch') AS priority,
    if(rand(4) % 1000 < 5, 'error', 'ok') AS status,
    if(status = 'error', ['timeout', 'oom', 'internal'][1 + rand(5) % 3], '') AS error_type,
    if(status = 'error', 'abort', if(rand(6) % 100 < 85, 'stop', 'length')) AS finish_reason,
    toFixedString(reinterpretAsString(generateUUIDv4(number)), 16) AS trace_id,
    toFixedString(reinterpretAsString(rand64(8)), 8) AS span_id,
    toUInt32(least(randLogNormal(log(180000), 0.7), 600000000)) AS ttft_us,
    toUInt32(least(randLogNormal(log(22000), 0.35), 10000000)) AS tpot_us,
    toUInt32(least(ttft_us + tpot_us * greatest(output_tokens - 1, 0), 4000000000)) AS e2e_us,
    toUInt32(least(randExponential(1 / 15000.0) * if(rand(9) % 100 < 3, 20, 1), ttft_us))
        AS queue_us,
    toUInt32(ttft_us - queue_us) AS prefill_us,
    toUInt32(e2e_us - ttft_us) AS decode_us,
    toUInt32(least(greatest(randLogNormal(log(900), 1.0), 1), 128000)) AS input_tokens,
    toUInt32(least(greatest(randLogNormal(log(180), 0.9), 1), 8192)) AS output_tokens,
    toUInt32(if(rand(10) % 100 < 30, input_tokens * 0.6, 0)) AS cached_tokens,
    if(decode_us > 0, toFloat32(output_tokens / (decode_us / 1e6)), NULL) AS output_tokens_per_s,
    toDecimal64((input_tokens * 0.05 + output_tokens * 0.2) / 1e6, 9) AS cost_usd,
    map() AS attributes
FROM numbers({{start:UInt64}}, {{count:UInt64}})
"""


def generate(
    store: Store,
    rows: int,
    *,
    days: float = 28.0,
    pools: list[str] | None = None,
    tenants: int = 50,
    chunk: int = 5_000_000,
    end: datetime | None = None,
    progress: bool = True,
) -> float:
    """Insert ``rows`` requests spread evenly over the ``days`` before ``end``; returns seconds."""
    pools = pools or POOLS
    end = end or datetime.now(UTC).replace(second=0, microsecond=0)
    t0 = (end - timedelta(days=days)).timestamp()
    sql = insert_sql(pools, tenants)
    started = time.perf_counter()
    for start in range(0, rows, chunk):
        count = min(chunk, rows - start)
        store.command(
            sql,
            {"t0": t0, "span": days * 86400.0, "n": float(rows), "start": start, "count": count},
        )
        if progress:
            done = start + count
            rate = done / (time.perf_counter() - started)
            print(f"  generated {done:,}/{rows:,} rows ({rate:,.0f} rows/s)", flush=True)
    return time.perf_counter() - started


def main() -> None:
    from controlplane.store.chdb_driver import ChdbStore
    from controlplane.store.migrate import migrate

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True, help="chDB data directory")
    ap.add_argument("--database", default="bench")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=float, default=28.0)
    args = ap.parse_args()
    store = ChdbStore(args.dir, database=args.database)
    migrate(store)
    have = store.query("SELECT count() FROM requests").rows[0][0]
    if have:
        print(f"{args.dir}/{args.database} already has {have:,} rows; not generating")
        return
    secs = generate(store, args.rows, days=args.days)
    print(f"generated {args.rows:,} rows in {secs:.1f} s")
    store.close()


if __name__ == "__main__":
    main()
