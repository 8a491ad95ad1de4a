"""Reading request rollups: good/total counts, percentiles and sums over any window.

A window ``[since, until)`` is split into whole hours (read from ``requests_1h``) and the
minutes at either edge (``requests_1m``), so a 28-day window reads ~700 hourly rows per
series instead of millions of raw rows. Windows are minute-aligned: ``since`` and
``until`` are floored to the minute.

Latency histograms key each request by its value rounded *up* to two significant
digits (microseconds). ``good`` = requests whose bucket bound <= threshold, which is
exact when the threshold has two significant digits; otherwise ``ambiguous`` counts the
requests in the one bucket that straddles the threshold (the error bar).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from controlplane.store.base import Store

LatencyMetric = Literal["ttft", "tpot", "e2e", "queue"]
_HIST = {"ttft": "ttft_hist", "tpot": "tpot_hist", "e2e": "e2e_hist", "queue": "queue_hist"}


@dataclass(frozen=True)
class Selector:
    """Which series: empty string means any."""

    pool: str = ""
    model: str = ""
    tenant: str = ""


@dataclass(frozen=True)
class GoodTotal:
    good: int
    total: int
    ambiguous: int = 0  # requests in the bucket straddling the threshold (not in good)

    @property
    def ratio(self) -> float | None:
        return self.good / self.total if self.total else None


def floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _ceil_hour(t: datetime) -> datetime:
    h = t.replace(minute=0, second=0, microsecond=0)
    return h if h == t else h + timedelta(hours=1)


def _split(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """Hour-aligned middle ``[h0, h1)``; empty (h0 == h1) when none fits."""
    h0, h1 = _ceil_hour(since), until.replace(minute=0, second=0, microsecond=0)
    if h0 >= h1:
        return since, since
    return h0, h1


def _union(columns: str, sel: Selector) -> str:
    """Rows of the window from both rollups; ``columns`` are aggregate-state columns.

    Without a tenant in the selector, the pool-level rollups (no tenant dimension) answer
    with far fewer rows to merge."""
    suffix = "_pool" if not sel.tenant else ""
    where = (
        "({pool:String} = '' OR pool = {pool:String}) "
        "AND ({model:String} = '' OR model = {model:String}) "
        "AND ({tenant:String} = '' OR tenant = {tenant:String})"
    )
    return f"""
SELECT {columns} FROM requests_1h{suffix}
WHERE {where} AND hour >= {{h0:DateTime('UTC')}} AND hour < {{h1:DateTime('UTC')}}
UNION ALL
SELECT {columns} FROM requests_1m{suffix}
WHERE {where} AND minute >= {{since:DateTime('UTC')}} AND minute < {{until:DateTime('UTC')}}
  AND NOT (minute >= {{h0:DateTime('UTC')}} AND minute < {{h1:DateTime('UTC')}})
"""


def _params(sel: Selector, since: datetime, until: datetime) -> dict[str, Any]:
    since, until = floor_minute(since), floor_minute(until)
    h0, h1 = _split(since, until)
    return {
        "pool": sel.pool, "model": sel.model, "tenant": sel.tenant,
        "since": since, "until": until, "h0": h0, "h1": h1,
    }  # fmt: skip


def latency_good_total(
    store: Store,
    sel: Selector,
    metric: LatencyMetric,
    threshold_s: float,
    since: datetime,
    until: datetime,
) -> GoodTotal:
    """Successful requests with ``metric`` <= threshold, out of those that reported it."""
    hist = _HIST[metric]
    sql = f"""
SELECT
    arraySum(mapValues(mapFilter((k, v) -> k <= {{t:UInt32}}, h))) AS good,
    arraySum(mapValues(h)) AS total,
    arraySum(mapValues(mapFilter((k, v) -> k = {{b:UInt32}} AND k != {{t:UInt32}}, h))) AS amb
FROM (SELECT sumMap(m) AS h FROM ({_union(f"{hist} AS m", sel)}))
"""
    t_us = int(round(threshold_s * 1e6))
    params = _params(sel, since, until) | {"t": t_us, "b": round_up_2sig(t_us)}
    good, total, amb = store.query(sql, params).rows[0]
    return GoodTotal(int(good or 0), int(total or 0), int(amb or 0))


def throughput_good_total(
    store: Store, sel: Selector, floor_tokens_per_s: float, since: datetime, until: datetime
) -> GoodTotal:
    """Successful requests with output tokens/s >= floor, out of those that reported it."""
    sql = f"""
SELECT
    arraySum(mapValues(mapFilter((k, v) -> k >= {{f:UInt32}}, h))) AS good,
    arraySum(mapValues(h)) AS total
FROM (SELECT sumMap(m) AS h FROM ({_union("tps_hist AS m", sel)}))
"""
    params = _params(sel, since, until) | {"f": int(round(floor_tokens_per_s * 1000))}
    good, total = store.query(sql, params).rows[0]
    return GoodTotal(int(good or 0), int(total or 0))


def availability_good_total(
    store: Store, sel: Selector, since: datetime, until: datetime
) -> GoodTotal:
    inner = _union("requests, errors", sel)
    sql = f"SELECT sum(requests) - sum(errors), sum(requests) FROM ({inner})"
    good, total = store.query(sql, _params(sel, since, until)).rows[0]
    return GoodTotal(int(good or 0), int(total or 0))


@dataclass(frozen=True)
class Totals:
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float


def totals(store: Store, sel: Selector, since: datetime, until: datetime) -> Totals:
    cols = "requests, errors, input_tokens, output_tokens, cached_tokens, cost_usd"
    sql = (
        "SELECT sum(requests), sum(errors), sum(input_tokens), sum(output_tokens), "
        f"sum(cached_tokens), toFloat64(sum(cost_usd)) FROM ({_union(cols, sel)})"
    )
    r = store.query(sql, _params(sel, since, until)).rows[0]
    req, err, inp, out, cached = (int(x or 0) for x in r[:5])
    return Totals(req, err, inp, out, cached, float(r[5] or 0.0))


def latency_quantiles(
    store: Store,
    sel: Selector,
    metric: LatencyMetric,
    quantiles: list[float],
    since: datetime,
    until: datetime,
) -> list[float | None]:
    """Quantiles in seconds: the upper bound of the bucket holding the rank.

    Never below the true value, and above it by less than one bucket width: at most
    10% relative (values just over 10, 100, 1000... us) and 1% near the top of a decade.
    """
    hist = _HIST[metric]
    inner = _union(f"{hist} AS m", sel)
    sql = f"SELECT mapKeys(h), mapValues(h) FROM (SELECT sumMap(m) AS h FROM ({inner}))"
    keys, counts = store.query(sql, _params(sel, since, until)).rows[0]
    return quantiles_from_histogram(list(keys or []), list(counts or []), quantiles)


def quantiles_from_histogram(
    keys: list[int], counts: list[int], quantiles: list[float]
) -> list[float | None]:
    total = sum(counts)
    if total == 0:
        return [None for _ in quantiles]
    pairs = sorted(zip(keys, counts, strict=True))
    out: list[float | None] = []
    for q in quantiles:
        rank = max(1, int(-(-q * total // 1)))  # ceil(q * total), at least 1
        seen = 0
        for k, c in pairs:
            seen += c
            if seen >= rank:
                out.append(k / 1e6)
                break
    return out


def round_up_2sig(u: int) -> int:
    """The bucket bound of ``u``: rounded up to two significant digits (as the rollup MV)."""
    p = 1
    while u >= 100 * p:
        p *= 10
    return -(-u // p) * p
