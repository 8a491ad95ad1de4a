"""What one LLM request cost, in USD.

Two ways a request is priced, chosen per request:

* **Self-hosted pool** (the record's pool is configured with ``gpu_hour_usd > 0``): the
  replica costs ``gpu_hour_usd x gpus_per_replica`` per hour; the request is charged the
  GPU time it used: prefill time for its input tokens, decode time for its output tokens,
  divided by the replica's concurrency (requests batched together share the GPU). This is
  the per-request estimate; the window figures in ``controlplane.cost`` reconcile against
  the GPU-hours actually provisioned (OpenCost's "allocation" vs "usage" bases).
* **API model** (a price entry whose pattern matches the model; first match wins): per
  1M tokens, ``(input - cached) x input + cached x cached_input + output x output``.
  Input token counts include cached tokens, as OpenAI's ``prompt_tokens`` and OTel's
  ``gen_ai.usage.input_tokens`` do.

Anything else costs 0.0. Prices come from configuration only; there is no built-in
table, because provider prices change and a stale default would be silently wrong.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collector.errors import PricingError
from collector.records import ReplicaSample, RequestRecord

_MTOK = 1_000_000.0
_CACHE_MAX = 4096  # distinct model names remembered by the pattern cache

# (pool, replica) -> mean number of requests the replica runs at once, when known.
ConcurrencySource = Callable[[str, str], float | None]


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens for models matching ``pattern`` (glob, or regex when ``regex``)."""

    pattern: str
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None  # None: same as input
    regex: bool = False

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
            v = getattr(self, name)
            if v is not None and (v < 0 or v != v):
                raise PricingError(f"price for {self.pattern!r}: {name} must be >= 0, got {v}")
        try:
            object.__setattr__(self, "_re", re.compile(self._source(), re.IGNORECASE))
        except re.error as exc:
            raise PricingError(f"price pattern {self.pattern!r}: invalid regex: {exc}") from exc

    def _source(self) -> str:
        return self.pattern if self.regex else fnmatch.translate(self.pattern)

    def matches(self, model: str) -> bool:
        rx: re.Pattern[str] = getattr(self, "_re")  # noqa: B009 - set in __post_init__
        return rx.fullmatch(model) is not None if self.regex else rx.match(model) is not None

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int) -> Cost:
        cached = min(max(cached_tokens, 0), max(input_tokens, 0))
        cached_rate = (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else (self.cached_input_per_mtok)
        )
        inp = ((input_tokens - cached) * self.input_per_mtok + cached * cached_rate) / _MTOK
        return Cost(inp, output_tokens * self.output_per_mtok / _MTOK, "api")


@dataclass(frozen=True)
class PoolPrice:
    """A self-hosted pool: what one replica costs per hour."""

    name: str
    gpu_hour_usd: float
    gpus_per_replica: int = 1

    def __post_init__(self) -> None:
        # ``not >= 0`` also refuses NaN (every comparison with NaN is false)
        if not self.gpu_hour_usd >= 0 or self.gpus_per_replica < 1:
            raise PricingError(
                f"pool {self.name!r}: gpu_hour_usd must be >= 0 and gpus_per_replica >= 1 "
                f"(got {self.gpu_hour_usd}, {self.gpus_per_replica})"
            )

    @property
    def replica_usd_per_s(self) -> float:
        return self.gpu_hour_usd * self.gpus_per_replica / 3600.0


@dataclass(frozen=True)
class Cost:
    input_usd: float
    output_usd: float
    source: str  # "gpu" | "api" | "none"

    @property
    def total_usd(self) -> float:
        return self.input_usd + self.output_usd


NO_COST = Cost(0.0, 0.0, "none")


def phase_seconds(r: RequestRecord) -> tuple[float, float]:
    """(prefill, decode) seconds; derived from TTFT/E2E when the engine did not report them."""
    prefill = r.prefill_us
    if prefill is None and r.ttft_us is not None:
        prefill = max(r.ttft_us - (r.queue_us or 0), 0)
    decode = r.decode_us
    if decode is None and r.e2e_us is not None and r.ttft_us is not None:
        decode = max(r.e2e_us - r.ttft_us, 0)
    return (prefill or 0) / 1e6, (decode or 0) / 1e6


class Pricer:
    def __init__(
        self,
        models: Sequence[ModelPrice] = (),
        pools: Mapping[str, PoolPrice] | Sequence[PoolPrice] = (),
        *,
        concurrency: ConcurrencySource | None = None,
    ) -> None:
        self.models = list(models)
        items = pools.values() if isinstance(pools, Mapping) else pools
        self.pools = {p.name: p for p in items if p.gpu_hour_usd > 0}
        self._concurrency = concurrency
        self._match_cache: dict[str, ModelPrice | None] = {}

    @classmethod
    def from_config(cls, pricing: Any, pools: Sequence[Any] = (), **kw: Any) -> Pricer:
        """From a ``PricingConfig`` (model or dict) and ``PoolConfig``s (models or dicts)."""
        cfg = _as_dict(pricing or {})
        models = []
        for i, m in enumerate(cfg.get("models", []) or []):
            m = _as_dict(m)
            try:
                models.append(
                    ModelPrice(
                        pattern=str(m["match"]),
                        input_per_mtok=float(m["input_usd_per_mtok"]),
                        output_per_mtok=float(m["output_usd_per_mtok"]),
                        cached_input_per_mtok=(
                            None
                            if m.get("cached_input_usd_per_mtok") is None
                            else float(m["cached_input_usd_per_mtok"])
                        ),
                        regex=bool(m.get("regex", False)),
                    )
                )
            except KeyError as exc:
                raise PricingError(f"pricing.models[{i}]: missing {exc.args[0]!r}") from exc
            except (TypeError, ValueError) as exc:  # PricingError is a ValueError too
                raise PricingError(f"pricing.models[{i}]: {exc}") from exc
        prices = []
        for p in pools:
            d = _as_dict(p)
            prices.append(
                PoolPrice(
                    str(d["name"]),
                    float(d.get("gpu_hour_usd", 0.0)),
                    int(d.get("gpus_per_replica", 1)),
                )  # fmt: skip
            )
        return cls(models, prices, **kw)

    def price_for(self, model: str) -> ModelPrice | None:
        if model in self._match_cache:
            return self._match_cache[model]
        found = next((m for m in self.models if m.matches(model)), None)
        if len(self._match_cache) < _CACHE_MAX:
            self._match_cache[model] = found
        return found

    def cost(self, record: RequestRecord) -> Cost:
        pool = self.pools.get(record.pool)
        if pool is not None:
            prefill_s, decode_s = phase_seconds(record)
            conc = self._concurrency(record.pool, record.replica) if self._concurrency else None
            share = pool.replica_usd_per_s / max(conc or 1.0, 1.0)
            return Cost(prefill_s * share, decode_s * share, "gpu")
        price = self.price_for(record.model) if record.model else None
        if price is None:
            return NO_COST
        return price.cost(record.input_tokens, record.output_tokens, record.cached_tokens)

    def request_cost(self, record: RequestRecord) -> float:
        """USD for one request (see the module docstring for the rules)."""
        return self.cost(record).total_usd


class ConcurrencyTracker:
    """A ``Sink`` wrapper that remembers each replica's latest ``running`` gauge.

    Put it between the scraper and the writer (``ConcurrencyTracker(writer)``) and pass
    it as ``Pricer(concurrency=tracker)``: self-hosted requests are then charged their
    share of a replica that serves several at once. Readings older than ``max_age_s``
    (on the injected monotonic clock) are ignored.
    """

    def __init__(
        self,
        sink: Any = None,
        *,
        max_age_s: float = 120.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._sink = sink
        self._max_age = max_age_s
        self._now = clock or time.monotonic
        self._latest: dict[tuple[str, str], tuple[float, float]] = {}  # -> (running, at)

    def emit(self, records: Sequence[Any]) -> None:
        now = self._now()
        for r in records:
            if isinstance(r, ReplicaSample) and r.up and r.running is not None:
                self._latest[(r.pool, r.replica)] = (r.running, now)
        if self._sink is not None:
            self._sink.emit(records)

    def __call__(self, pool: str, replica: str) -> float | None:
        found = self._latest.get((pool, replica))
        if found is None or self._now() - found[1] > self._max_age:
            return None
        return found[0]


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "model_dump"):
        out: dict[str, Any] = obj.model_dump()
        return out
    if isinstance(obj, Mapping):
        return dict(obj)
    raise PricingError(f"expected a mapping or a config model, got {type(obj).__name__}")
