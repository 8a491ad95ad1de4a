"""The simulated replica's Prometheus metrics, named, typed and bucketed as vLLM's.

Names, labels (``model_name``, ``engine``) and buckets follow
``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``). GPU metrics follow
dcgm-exporter's default counters (``etc/default-counters.csv``) and are rendered as its
text: gauges, the energy counter without a ``_total`` suffix, and its label set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.sim.engine import EngineStats, RequestTiming
from controlplane.sim.gpu_model import GpuModel
from controlplane.sim.replica_faults import Faults

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort")


def build_1_2_5_buckets(max_value: int) -> tuple[float, ...]:
    """vLLM's 1, 2, 5, 10, 20, 50, ... buckets up to ``max_value`` (max_model_len)."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exponent
            if v > max_value:
                return tuple(out)
            out.append(float(v))
        exponent += 1


class VllmMetrics:
    """vLLM v1 metrics of one engine; ``update`` is called after every engine step."""

    def __init__(self, registry: CollectorRegistry, model: str, max_model_len: int) -> None:
        labels = ["model_name", "engine"]
        values = (model, "0")

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=registry).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=registry).labels(*values)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            h = Histogram(name, doc, labels, buckets=buckets, registry=registry)
            return h.labels(*values)

        self.running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.kv_usage = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.gpu_cache_usage = gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage."
            "DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        )
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            labels + ["finished_reason"], registry=registry,
        )  # fmt: skip
        self.success = {r: success.labels(model, "0", r) for r in FINISH_REASONS}
        tokens = build_1_2_5_buckets(max_model_len)
        self.prompt_hist = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens
        )
        self.generation_hist = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tokens
        )
        self.ttft = hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.tpot = hist(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.", TPOT_BUCKETS,
        )  # fmt: skip
        self.itl = hist(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            TPOT_BUCKETS,
        )
        lat = REQUEST_LATENCY_BUCKETS
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", lat
        )
        self.queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            lat,
        )
        self.inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            lat,
        )
        self.prefill = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            lat,
        )
        self.decode = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            lat,
        )
        self._last: EngineStats | None = None

    def update(self, stats: EngineStats) -> None:
        """Set gauges and advance counters by what changed since the previous call."""
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        self.kv_usage.set(stats.kv_usage)
        self.gpu_cache_usage.set(stats.kv_usage)
        last = self._last
        self.preemptions.inc(
            stats.num_preemptions_total - (last.num_preemptions_total if last else 0)
        )
        self.prompt_tokens.inc(
            stats.prompt_tokens_total - (last.prompt_tokens_total if last else 0)
        )
        self.generation_tokens.inc(
            stats.generation_tokens_total - (last.generation_tokens_total if last else 0)
        )
        self.prefix_queries.inc(
            stats.prefix_cache_queries_total - (last.prefix_cache_queries_total if last else 0)
        )
        self.prefix_hits.inc(
            stats.prefix_cache_hits_total - (last.prefix_cache_hits_total if last else 0)
        )
        self._last = stats

    def observe_inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def observe_finished(self, t: RequestTiming) -> None:
        if t.finish_reason in self.success:
            self.success[t.finish_reason].inc()
        self.prompt_hist.observe(t.prompt_tokens)
        self.generation_hist.observe(t.generation_tokens)
        self.e2e.observe(t.e2e_s)
        for hist, value in (
            (self.ttft, t.ttft_s),
            (self.tpot, t.tpot_s),
            (self.queue, t.queue_s),
            (self.prefill, t.prefill_s),
            (self.decode, t.decode_s),
        ):
            if value is not None:
                hist.observe(value)
        if t.scheduled_s is not None:
            self.inference.observe(t.finish_s - t.scheduled_s)


# dcgm-exporter default counters: (field, type, help) as in etc/default-counters.csv.
DCGM_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
        "Total energy consumption since boot (in mJ).",
    ),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
    (
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
    ),
    (
        "DCGM_FI_PROF_DRAM_ACTIVE", "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class GpuIdentity:
    """The labels dcgm-exporter puts on every line."""

    gpu: int
    uuid: str
    pci_bus_id: str
    model_name: str
    hostname: str
    driver_version: str = "535.183.01"

    def labels(self) -> str:
        pairs = (
            ("gpu", str(self.gpu)),
            ("UUID", self.uuid),
            ("pci_bus_id", self.pci_bus_id),
            ("device", f"nvidia{self.gpu}"),
            ("modelName", self.model_name),
            ("Hostname", self.hostname),
            ("DCGM_FI_DRIVER_VERSION", self.driver_version),
        )
        return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_dcgm(identity: GpuIdentity, values: Mapping[str, float]) -> str:
    """dcgm-exporter text for one GPU; fields missing from ``values`` are left out."""
    lines: list[str] = []
    labels = identity.labels()
    for name, kind, doc in DCGM_FIELDS:
        if name not in values:
            continue
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{{{labels}}} {_number(values[name])}")
    return "\n".join(lines) + "\n"


MIB = 1024 * 1024


class DcgmGpu:
    """``GpuModel`` telemetry as dcgm-exporter fields, with the replica's faults applied."""

    def __init__(self, model: GpuModel) -> None:
        self.model = model

    def sample(
        self, stats: EngineStats, dt: float, faults: Faults, loaded: bool
    ) -> dict[str, float]:
        m = self.model
        m.loaded = loaded
        m.clear_faults()
        thermal = faults.get("thermal")
        if thermal is not None:
            m.inject_thermal(thermal.multiplier)
        if faults.xid:
            m.inject_xid(faults.xid)
        s = m.sample(stats, dt)
        used, total = s["memory_used_bytes"], s["memory_total_bytes"]
        return {
            "DCGM_FI_DEV_SM_CLOCK": s["sm_clock_mhz"],
            "DCGM_FI_DEV_MEM_CLOCK": s["memory_clock_mhz"],
            "DCGM_FI_DEV_MEMORY_TEMP": s["memory_temperature_c"],
            "DCGM_FI_DEV_GPU_TEMP": s["temperature_c"],
            "DCGM_FI_DEV_POWER_USAGE": s["power_w"],
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": round(s["energy_j"] * 1000.0),
            "DCGM_FI_DEV_GPU_UTIL": round(s["utilization"] * 100.0),
            "DCGM_FI_DEV_MEM_COPY_UTIL": round(s["dram_active"] * 100.0),
            "DCGM_FI_DEV_XID_ERRORS": s["last_xid"],
            "DCGM_FI_DEV_FB_FREE": (total - used) // MIB,
            "DCGM_FI_DEV_FB_USED": used // MIB,
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE": round(s["utilization"], 6),
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": round(s["tensor_active"], 6),
            "DCGM_FI_PROF_DRAM_ACTIVE": round(s["dram_active"], 6),
        }
