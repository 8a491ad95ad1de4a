"""Cheaper rollup views: one view reads the raw rows, the hourly rollup chains from it.

Every insert into ``requests`` runs each dependent view's SELECT on the inserted block,
and chDB (ClickHouse 26.9) re-analyzes that SELECT on every insert at roughly 0.1 ms
per expression node. m0001's two raw views spelled the two-significant-digit bucket as
a ``multiIf`` over eight copies of the value, repeated inside ``intDiv``: ~50 ms of
analysis per view per insert, more than aggregating 10,000 rows. This migration:

- rewrites ``requests_1m_mv`` with the same buckets from a shorter expression: the power
  of ten is ``intExp10`` of the digit count (``length(toString(v))``), integer
  arithmetic as before. For every UInt32 latency and every throughput value the key is
  the same as m0001's (checked value by value over the boundaries of every decade and
  tens of millions of values; ``tests/store/test_rollup_views.py`` keeps the edges);
- feeds ``requests_1h`` from ``requests_1m``'s inserted block (already one row per
  minute and series) instead of from the raw rows, as m0004 does for the pool rollups.
  Sums and ``sumMap`` are associative, so the hourly rows are the same.

Rollup tables are untouched (no data is rewritten); only views are dropped and created,
so the migration is instant on any store size. Inserts that run between the DROP and
the CREATE would miss the rollups: migrations run before ``serve`` accepts writes.
"""

from __future__ import annotations

LATENCIES = ("ttft_us", "tpot_us", "e2e_us", "queue_us")


def round_up_2sig(expr: str) -> str:
    """``expr`` (a Nullable UInt32) rounded up to two significant digits, NULL as 0.

    The digit count of a UInt64 is ``length(toString(v))``; ``10^max(digits-2, 0)`` is the
    step m0001 picked with a ``multiIf`` (the same for every UInt32, including the
    wrap-around of ``toUInt32`` above 4.2e9).
    """
    v = f"toUInt64(ifNull({expr}, 0))"
    p = f"intExp10(greatest(length(toString({v})), 2) - 2)"
    return f"toUInt32(intDiv({v} + {p} - 1, {p}) * {p})"


def round_down_2sig_tps(expr: str) -> str:
    """Output tokens/s x1000 rounded down to two significant digits (step at most 10^6),
    as m0001's throughput buckets."""
    v = f"toUInt64(ifNull(least({expr}, 4000000) * 1000, 0))"
    p = f"intExp10(least(greatest(length(toString({v})), 2) - 2, 6))"
    return f"toUInt32(intDiv({v}, {p}) * {p})"


def _hist(key: str, col: str) -> str:
    return f"sumMapIf(map({key}, toUInt64(1)), status = 'ok' AND {col} IS NOT NULL)"


_MINUTE_VIEW = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS requests_1m_mv TO requests_1m AS
SELECT
    toStartOfMinute(ts) AS minute, pool, model, tenant,
    count() AS requests,
    countIf(status = 'error') AS errors,
    {", ".join(f"{_hist(round_up_2sig(c), c)} AS {c[:-3]}_hist" for c in LATENCIES)},
    {_hist(round_down_2sig_tps("output_tokens_per_s"), "output_tokens_per_s")} AS tps_hist,
    sum(toUInt64(input_tokens)) AS input_tokens,
    sum(toUInt64(output_tokens)) AS output_tokens,
    sum(toUInt64(cached_tokens)) AS cached_tokens,
    sum(toDecimal128(cost_usd, 9)) AS cost_usd
FROM requests
GROUP BY minute, pool, model, tenant
"""

_HOUR_VIEW = """
CREATE MATERIALIZED VIEW IF NOT EXISTS requests_1h_mv TO requests_1h AS
SELECT
    toStartOfHour(minute) AS hour, pool, model, tenant,
    sum(requests) AS requests, sum(errors) AS errors,
    sumMap(ttft_hist) AS ttft_hist, sumMap(tpot_hist) AS tpot_hist,
    sumMap(e2e_hist) AS e2e_hist, sumMap(queue_hist) AS queue_hist,
    sumMap(tps_hist) AS tps_hist,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens, sum(cost_usd) AS cost_usd
FROM requests_1m
GROUP BY hour, pool, model, tenant
"""

STATEMENTS: list[str] = [
    "DROP VIEW IF EXISTS requests_1m_mv",
    _MINUTE_VIEW,
    "DROP VIEW IF EXISTS requests_1h_mv",
    _HOUR_VIEW,
]
