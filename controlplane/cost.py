"""Cost and cost per 1K tokens per pool, model and tenant over any window.

Self-hosted pools (``gpu_hour_usd > 0``) are costed from the GPU-hours they held, read
from ``replica_samples`` in time buckets (default one minute, which must not be shorter
than the scrape interval):

* ``allocation``: every bucket in which a replica reported a sample counts in full,
  up or not, busy or idle: what the pool cost to keep provisioned (chargeback).
* ``usage``: each replica-bucket counts by the share of its samples that had requests
  running or waiting: the GPU time spent on tokens (efficiency).

Cost = GPU-hours x ``gpu_hour_usd``, where GPU-hours = replica-hours x
``gpus_per_replica``. A model/tenant selection inside a pool gets the pool's cost in
proportion to its requests' own GPU time (prefill + decode), and each selection's cost
is split into input and output by its prefill vs decode time, as OpenCost's inference
cost tracking does. When no request reported timings the split falls back to tokens.

API-priced pools (no GPU price) sum the per-request costs priced at ingest
(``collector.pricing``), read from the rollups. Tokens always come from the rollups
(``controlplane.store.rollups.totals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from collector.pricing import PoolPrice
from controlplane.errors import QueryError
from controlplane.store.base import Store
from controlplane.store.rollups import Selector, floor_minute, totals

Basis = Literal["usage", "allocation"]
BASES: tuple[Basis, ...] = ("usage", "allocation")

_GPU_TIME = """
SELECT count() AS replica_buckets, sum(busy) AS busy_buckets
FROM (
    SELECT replica, toStartOfInterval(ts, toIntervalSecond({bucket:UInt32})) AS b,
           countIf(up AND (ifNull(running, 0) > 0 OR ifNull(waiting, 0) > 0)) / count() AS busy
    FROM replica_samples
    WHERE pool = {pool:String}
      AND ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
    GROUP BY replica, b
)
"""

# Own GPU time per request: engine-reported prefill/decode, else derived from TTFT/E2E.
_PHASES = """
SELECT sum(p), sum(d), sumIf(p, sel), sumIf(d, sel)
FROM (
    SELECT
        toFloat64(coalesce(prefill_us,
            greatest(toInt64(ttft_us) - toInt64(coalesce(queue_us, 0)), 0), 0)) AS p,
        toFloat64(coalesce(decode_us, greatest(toInt64(e2e_us) - toInt64(ttft_us), 0), 0)) AS d,
        ({model:String} = '' OR model = {model:String})
            AND ({tenant:String} = '' OR tenant = {tenant:String}) AS sel
    FROM requests
    WHERE pool = {pool:String}
      AND ts >= {since:DateTime64(6, 'UTC')} AND ts < {until:DateTime64(6, 'UTC')}
)
"""

_POOLS_SEEN = """
SELECT DISTINCT pool FROM requests_1m
WHERE minute >= {since:DateTime('UTC')} AND minute < {until:DateTime('UTC')}
ORDER BY pool
"""


@dataclass(frozen=True)
class CostLine:
    pool: str
    kind: str  # "self_hosted" | "api"
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    input_cost_usd: float
    output_cost_usd: float
    gpu_hours: float | None = None  # self-hosted: GPU-hours charged on this basis

    @property
    def cost_usd(self) -> float:
        return self.input_cost_usd + self.output_cost_usd

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_per_1k_tokens(self) -> float | None:
        return self.cost_usd / self.tokens * 1000 if self.tokens else None

    @property
    def input_cost_per_1k_tokens(self) -> float | None:
        return self.input_cost_usd / self.input_tokens * 1000 if self.input_tokens else None

    @property
    def output_cost_per_1k_tokens(self) -> float | None:
        return self.output_cost_usd / self.output_tokens * 1000 if self.output_tokens else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("cost_usd", "tokens", "cost_per_1k_tokens", "input_cost_per_1k_tokens",
                     "output_cost_per_1k_tokens"):  # fmt: skip
            d[name] = getattr(self, name)
        return d


@dataclass(frozen=True)
class CostReport:
    basis: Basis
    since: datetime
    until: datetime
    selector: Selector
    lines: list[CostLine]

    @property
    def total(self) -> CostLine:
        gpu = [ln.gpu_hours for ln in self.lines if ln.gpu_hours is not None]
        return CostLine(
            pool=self.selector.pool,
            kind="total",
            requests=sum(ln.requests for ln in self.lines),
            input_tokens=sum(ln.input_tokens for ln in self.lines),
            output_tokens=sum(ln.output_tokens for ln in self.lines),
            cached_tokens=sum(ln.cached_tokens for ln in self.lines),
            input_cost_usd=sum(ln.input_cost_usd for ln in self.lines),
            output_cost_usd=sum(ln.output_cost_usd for ln in self.lines),
            gpu_hours=sum(gpu) if gpu else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "pool": self.selector.pool,
            "model": self.selector.model,
            "tenant": self.selector.tenant,
            "lines": [ln.as_dict() for ln in self.lines],
            "total": self.total.as_dict(),
        }


def pool_prices(pools: Sequence[Any]) -> dict[str, PoolPrice]:
    """Self-hosted prices from ``PoolConfig``s (pools without a GPU price are left out)."""
    out = {}
    for p in pools:
        if p.gpu_hour_usd > 0:
            out[p.name] = PoolPrice(p.name, p.gpu_hour_usd, p.gpus_per_replica)
    return out


def cost_report(
    store: Store,
    prices: dict[str, PoolPrice],
    sel: Selector,
    since: datetime,
    until: datetime,
    basis: Basis = "allocation",
    *,
    bucket_s: int = 60,
) -> CostReport:
    if basis not in BASES:
        raise QueryError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
    if bucket_s < 1:
        raise QueryError(f"bucket_s must be >= 1, got {bucket_s}")
    since, until = floor_minute(since), floor_minute(until)
    if until <= since:
        raise QueryError(f"empty window: until ({until}) must be after since ({since})")
    names = [sel.pool] if sel.pool else _pools(store, prices, since, until)
    lines = []
    for name in names:
        price = prices.get(name)
        line = (
            _self_hosted(store, price, sel, since, until, basis, bucket_s)
            if price is not None
            else _api(store, name, sel, since, until)
        )
        if line.requests or line.cost_usd:
            lines.append(line)
    return CostReport(basis, since, until, sel, lines)


def _pools(
    store: Store, prices: dict[str, PoolPrice], since: datetime, until: datetime
) -> list[str]:
    seen = {str(r[0]) for r in store.query(_POOLS_SEEN, {"since": since, "until": until}).rows}
    return sorted(seen | set(prices))


def _api(store: Store, pool: str, sel: Selector, since: datetime, until: datetime) -> CostLine:
    t = totals(store, Selector(pool, sel.model, sel.tenant), since, until)
    # Per-request costs are stored whole; split them by the tokens each side used.
    tokens = t.input_tokens + t.output_tokens
    inp = t.cost_usd * t.input_tokens / tokens if tokens else t.cost_usd
    return CostLine(
        pool, "api", t.requests, t.input_tokens, t.output_tokens, t.cached_tokens,
        inp, t.cost_usd - inp,
    )  # fmt: skip


def _self_hosted(
    store: Store,
    price: PoolPrice,
    sel: Selector,
    since: datetime,
    until: datetime,
    basis: Basis,
    bucket_s: int,
) -> CostLine:
    params = {"pool": price.name, "since": since, "until": until, "bucket": bucket_s}
    replica_buckets, busy_buckets = store.query(_GPU_TIME, params).rows[0]
    buckets = float(replica_buckets or 0) if basis == "allocation" else float(busy_buckets or 0)
    gpu_hours = buckets * bucket_s / 3600.0 * price.gpus_per_replica
    pool_usd = gpu_hours * price.gpu_hour_usd

    t = totals(store, Selector(price.name, sel.model, sel.tenant), since, until)
    phase_params = params | {"model": sel.model, "tenant": sel.tenant}
    pool_p, pool_d, sel_p, sel_d = (
        float(x or 0) for x in store.query(_PHASES, phase_params).rows[0]
    )
    whole = not sel.model and not sel.tenant
    if whole:
        share = 1.0
    elif pool_p + pool_d > 0:
        share = (sel_p + sel_d) / (pool_p + pool_d)
    else:
        pool_t = totals(store, Selector(price.name), since, until)
        all_tokens = pool_t.input_tokens + pool_t.output_tokens
        share = (t.input_tokens + t.output_tokens) / all_tokens if all_tokens else 0.0
    usd = pool_usd * share
    if sel_p + sel_d > 0:
        input_share = sel_p / (sel_p + sel_d)
    else:
        tokens = t.input_tokens + t.output_tokens
        input_share = t.input_tokens / tokens if tokens else 0.5
    return CostLine(
        price.name, "self_hosted", t.requests, t.input_tokens, t.output_tokens,
        t.cached_tokens, usd * input_share, usd * (1 - input_share), gpu_hours * share,
    )  # fmt: skip
