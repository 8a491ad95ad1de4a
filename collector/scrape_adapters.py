"""Adapters: one scrape of an engine or GPU exporter into ``ReplicaSample``/``GpuSample`` rows.

Engines (vLLM, SGLang, TGI) are described as data (``EngineSpec``): which sample names
hold running and waiting requests, KV-cache usage and the token counters, newest name
first. One replica may expose several label sets (vLLM data parallel: ``engine="0"``,
``"1"``; several ``model_name``\\ s): counts and rates are summed across them, KV-cache usage
is averaged (a fraction of each engine's own pool). SGLang repeats the scheduler's gauges
once per tensor/pipeline-parallel rank; those copies are collapsed first, else a TP=2
server would report twice its running requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from collector import gpu_names as gn
from collector.records import GpuSample, ReplicaSample
from collector.scrape_parse import Samples, Series
from collector.scrape_rates import CounterRates
from collector.scrape_targets import Target


@dataclass(frozen=True)
class EngineSpec:
    engine: str
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_cache: tuple[str, ...] = ()
    prompt_tokens: tuple[str, ...] = ()  # counters (or histogram _sum of per-request counts)
    generation_tokens: tuple[str, ...] = ()
    preemptions: tuple[str, ...] = ()
    prefix_hits: tuple[str, ...] = ()  # counters; hit rate = d(hits) / d(queries)
    prefix_queries: tuple[str, ...] = ()
    prefix_hit_gauge: tuple[str, ...] = ()  # a 0..1 gauge, used when counters give nothing
    model_label: str = "model_name"
    replica_labels: frozenset[str] = frozenset()  # labels whose copies are collapsed


VLLM = EngineSpec(
    engine="vllm",
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    kv_cache=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    prompt_tokens=("vllm:prompt_tokens_total",),
    generation_tokens=("vllm:generation_tokens_total",),
    preemptions=("vllm:num_preemptions_total",),
    prefix_hits=("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    prefix_queries=("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    # vLLM V0 exported a ready-made ratio instead of counters.
    prefix_hit_gauge=("vllm:gpu_prefix_cache_hit_rate",),
)

SGLANG = EngineSpec(
    engine="sglang",
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_cache=("sglang:token_usage",),
    prompt_tokens=("sglang:prompt_tokens_total",),
    generation_tokens=("sglang:generation_tokens_total",),
    # Cached prompt tokens over prompt tokens is the prefix-cache hit rate of the interval.
    prefix_hits=("sglang:cached_tokens_total",),
    prefix_queries=("sglang:prompt_tokens_total",),
    prefix_hit_gauge=("sglang:cache_hit_rate",),
    replica_labels=frozenset({"tp_rank", "pp_rank", "attn_tp_rank", "moe_ep_rank"}),
)

TGI = EngineSpec(
    engine="tgi",
    running=("tgi_batch_current_size",),
    waiting=("tgi_queue_size",),
    # TGI has no token counters: the per-request histograms' _sum grows by each finished
    # request's token count, so its rate is tokens/s (of finished requests).
    prompt_tokens=("tgi_request_input_length_sum",),
    generation_tokens=("tgi_request_generated_tokens_sum",),
    model_label="",
)

# Triton's own metrics (docs/user_guide/metrics.md) have a queue gauge but no running or
# KV-cache figures; a Triton serving vLLM's backend also exposes vllm:* (use kind vllm).
TRITON = EngineSpec(
    engine="triton",
    running=(),
    waiting=("nv_inference_pending_request_count",),
    model_label="model",
)

ENGINES = {"vllm": VLLM, "sglang": SGLANG, "tgi": TGI, "triton": TRITON}


def collapse(series: Sequence[Series], drop: frozenset[str]) -> list[Series]:
    """Merge series that differ only in ``drop`` labels, keeping the largest value."""
    if not drop:
        return list(series)
    best: dict[tuple[tuple[str, str], ...], Series] = {}
    for s in series:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k not in drop))
        cur = best.get(key)
        if cur is None or s.value > cur.value:
            best[key] = Series({k: v for k, v in key}, s.value)
    return list(best.values())


def _finite(series: Iterable[Series]) -> list[Series]:
    return [s for s in series if math.isfinite(s.value)]


class EngineAdapter:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def _series(self, samples: Samples, names: tuple[str, ...]) -> tuple[str, list[Series]]:
        found = samples.first(*names)
        if found is None:
            return "", []
        name, series = found
        return name, collapse(_finite(series), self.spec.replica_labels)

    def _sum(self, samples: Samples, names: tuple[str, ...]) -> float | None:
        _, series = self._series(samples, names)
        return sum(s.value for s in series) if series else None

    def records(
        self, samples: Samples, target: Target, now: float, rates: CounterRates
    ) -> list[Any]:
        spec = self.spec
        increases: dict[str, tuple[float | None, float | None]] = {}

        def increase(names: tuple[str, ...]) -> tuple[float | None, float | None]:
            name, series = self._series(samples, names)
            if not series:
                return None, None
            if name not in increases:  # one baseline update per counter per scrape
                increases[name] = rates.increase(target.key, name, series, now)
            return increases[name]

        def rate(names: tuple[str, ...]) -> float | None:
            inc, span = increase(names)
            return inc / span if inc is not None and span else None

        _, kv = self._series(samples, spec.kv_cache)
        kv_usage = sum(s.value for s in kv) / len(kv) if kv else None

        hits, _ = increase(spec.prefix_hits)
        queries, _ = increase(spec.prefix_queries)
        hit_rate: float | None = None
        if hits is not None and queries:
            hit_rate = min(1.0, max(0.0, hits / queries))
        elif queries is None or queries == 0:
            _, gauge = self._series(samples, spec.prefix_hit_gauge)
            if gauge:
                hit_rate = sum(s.value for s in gauge) / len(gauge)

        models: set[str] = set()
        if spec.model_label:
            for names in (spec.running, spec.waiting, spec.generation_tokens):
                for s in self._series(samples, names)[1]:
                    if s.labels.get(spec.model_label):
                        models.add(s.labels[spec.model_label])
        model = ",".join(sorted(models)) or target.labels.get("model", "")

        return [
            ReplicaSample(
                ts=datetime.fromtimestamp(now, tz=UTC),
                pool=target.pool,
                replica=target.replica or target.instance,
                model=model,
                engine=spec.engine,
                up=True,
                running=self._sum(samples, spec.running),
                waiting=self._sum(samples, spec.waiting),
                kv_cache_usage=kv_usage,
                prompt_tokens_per_s=rate(spec.prompt_tokens),
                generation_tokens_per_s=rate(spec.generation_tokens),
                preemptions_per_s=rate(spec.preemptions),
                prefix_cache_hit_rate=hit_rate,
            )
        ]


# --- GPU exporters ------------------------------------------------------------------------

# DCGM "blank" values: DCGM_INT64_BLANK (0x7ffffffffffffff0) and its NOT_FOUND,
# NOT_SUPPORTED (9223372036854775794), NOT_PERMISSIONED neighbours arrive as floats near
# 2**63; DCGM_INT32_BLANK 0x7ffffff0.. and DCGM_FP64_BLANK 140737488355328.0.. likewise.
_INT64_BLANK = float(0x7FFFFFFFFFFFFFF0) - 4096.0
_INT32_BLANK = (float(0x7FFFFFF0), float(0x7FFFFFFF))
_FP64_BLANK = (140737488355328.0, 140737488355328.0 + 4.0)


def dcgm_value(v: float) -> float | None:
    if not math.isfinite(v) or v >= _INT64_BLANK:
        return None
    if _INT32_BLANK[0] <= v <= _INT32_BLANK[1] or _FP64_BLANK[0] <= v <= _FP64_BLANK[1]:
        return None
    return v


MIB = 1024 * 1024

# DCGM field -> (GpuSample field, conversion). Newest name first where fields were renamed.
_DCGM_FIELDS: list[tuple[tuple[str, ...], str, Callable[[float], Any]]] = [
    (("DCGM_FI_DEV_GPU_UTIL",), "utilization", lambda v: v / 100.0),
    (("DCGM_FI_DEV_FB_USED",), "memory_used_bytes", lambda v: int(v * MIB)),
    (("DCGM_FI_DEV_POWER_USAGE",), "power_w", float),
    (("DCGM_FI_DEV_POWER_MGMT_LIMIT", "DCGM_FI_DEV_ENFORCED_POWER_LIMIT"), "power_limit_w", float),
    (("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total",), "energy_j", lambda v: v / 1000.0),
    (("DCGM_FI_DEV_GPU_TEMP",), "temperature_c", float),
    (("DCGM_FI_DEV_MEMORY_TEMP",), "memory_temperature_c", float),
    (("DCGM_FI_DEV_SM_CLOCK",), "sm_clock_mhz", float),
    (("DCGM_FI_DEV_MEM_CLOCK",), "memory_clock_mhz", float),
    (
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"),
        "clock_event_reasons",
        int,
    ),
    (
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL_total", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
        "ecc_uncorrected",
        int,
    ),
    (("DCGM_FI_DEV_ROW_REMAP_PENDING",), "remapped_rows_pending", int),
    (("DCGM_FI_DEV_XID_ERRORS",), "last_xid", int),
]

_DeviceKey = tuple[str, str, str, str]  # gpu, uuid, mig profile, mig instance id


def _device_key(labels: dict[str, str]) -> _DeviceKey:
    return (
        labels.get("gpu", ""),
        labels.get("UUID", labels.get("uuid", "")),
        labels.get("GPU_I_PROFILE", ""),
        labels.get("GPU_I_ID", ""),
    )


def _gpu_index(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return 0


def _node(labels: dict[str, str], target: Target) -> str:
    return (
        labels.get("Hostname")
        or labels.get("hostname")
        or target.labels.get("node")
        or urlsplit(target.url).hostname
        or ""
    )


class DcgmAdapter:
    def records(
        self, samples: Samples, target: Target, now: float, rates: CounterRates
    ) -> list[Any]:
        devices: dict[_DeviceKey, dict[str, Any]] = {}
        meta: dict[_DeviceKey, dict[str, str]] = {}

        def put(names: tuple[str, ...], field_name: str, conv: Callable[[float], Any]) -> None:
            found = samples.first(*names)
            for s in found[1] if found else ():
                key = _device_key(s.labels)
                meta.setdefault(key, s.labels)
                row = devices.setdefault(key, {})
                v = dcgm_value(s.value)
                if v is not None:
                    row[field_name] = conv(v)

        for names, field_name, conv in _DCGM_FIELDS:
            put(names, field_name, conv)
        put(("DCGM_FI_DEV_FB_FREE",), "_fb_free", lambda v: int(v * MIB))
        put(("DCGM_FI_DEV_FB_RESERVED",), "_fb_reserved", lambda v: int(v * MIB))
        # Under MIG there is no per-instance GPU_UTIL; graphics-engine activity stands in.
        put(("DCGM_FI_PROF_GR_ENGINE_ACTIVE",), "_gr_active", float)

        ts = datetime.fromtimestamp(now, tz=UTC)
        out: list[Any] = []
        for key, row in sorted(devices.items()):
            labels = meta[key]
            free = row.pop("_fb_free", None)
            reserved = row.pop("_fb_reserved", 0)
            gr = row.pop("_gr_active", None)
            if "memory_used_bytes" in row and free is not None:
                row["memory_total_bytes"] = row["memory_used_bytes"] + free + reserved
            if "utilization" not in row and gr is not None:
                row["utilization"] = gr
            out.append(
                GpuSample(
                    ts=ts,
                    node=_node(labels, target),
                    gpu=_gpu_index(key[0]),
                    uuid=key[1],
                    name=labels.get("modelName", ""),
                    mig_profile=key[2],
                    pool=target.pool,
                    # The pod using the GPU (dcgm-exporter's Kubernetes mapping) is its replica.
                    replica=labels.get("pod", "") or target.replica,
                    source="dcgm",
                    healthy=True,
                    **row,
                )
            )
        return out


_AGENT_FIELDS: list[tuple[str, str, Callable[[float], Any]]] = [
    (gn.UTILIZATION, "utilization", float),
    (gn.MEMORY_USED, "memory_used_bytes", int),
    (gn.MEMORY_TOTAL, "memory_total_bytes", int),
    (gn.POWER, "power_w", float),
    (gn.POWER_LIMIT, "power_limit_w", float),
    (gn.ENERGY + "_total", "energy_j", float),
    (gn.TEMPERATURE, "temperature_c", float),
    (gn.MEMORY_TEMPERATURE, "memory_temperature_c", float),
    (gn.SM_CLOCK, "sm_clock_mhz", lambda v: v / 1e6),
    (gn.MEMORY_CLOCK, "memory_clock_mhz", lambda v: v / 1e6),
    (gn.CLOCK_EVENT_REASONS, "clock_event_reasons", int),
    (gn.ECC_UNCORRECTED + "_total", "ecc_uncorrected", int),
    (gn.REMAPPED_ROWS_PENDING, "remapped_rows_pending", int),
    (gn.LAST_XID, "last_xid", int),
]


class AgentAdapter:
    """Reads Governor's own agent (``collector.gpu_metrics``) back into ``GpuSample`` rows."""

    def records(
        self, samples: Samples, target: Target, now: float, rates: CounterRates
    ) -> list[Any]:
        devices: dict[tuple[str, str, str], dict[str, Any]] = {}
        meta: dict[tuple[str, str, str], dict[str, str]] = {}

        def key_of(labels: dict[str, str]) -> tuple[str, str, str]:
            return labels.get("gpu", ""), labels.get("uuid", ""), labels.get("mig_profile", "")

        for s in samples.get(gn.UP):
            k = key_of(s.labels)
            meta.setdefault(k, s.labels)
            devices.setdefault(k, {})["healthy"] = s.value >= 1.0
        for name, field_name, conv in _AGENT_FIELDS:
            for s in _finite(samples.get(name)):
                k = key_of(s.labels)
                meta.setdefault(k, s.labels)
                devices.setdefault(k, {})[field_name] = conv(s.value)
        ts = datetime.fromtimestamp(now, tz=UTC)
        out: list[Any] = []
        for k, row in sorted(devices.items()):
            labels = meta[k]
            simulated = labels.get("simulated") == "true"
            out.append(
                GpuSample(
                    ts=ts,
                    node=labels.get("node") or _node(labels, target),
                    gpu=_gpu_index(k[0]),
                    uuid=k[1],
                    name=labels.get("name", ""),
                    mig_profile=k[2],
                    pool=target.pool,
                    replica=target.replica,
                    source="sim" if simulated else "agent",
                    **row,
                )
            )
        return out


ADAPTERS: dict[str, Any] = {
    **{kind: EngineAdapter(spec) for kind, spec in ENGINES.items()},
    "dcgm": DcgmAdapter(),
    "agent": AgentAdapter(),
}


def adapter_for(kind: str) -> Any:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise KeyError(f"no adapter for target kind {kind!r}") from None
