"""Simulated GPU telemetry tied to the engine's state, with fault hooks.

``GpuModel.sample(engine_stats, dt)`` turns what the engine did during the last ``dt``
seconds into what NVML / dcgm-exporter would report for an H100 SXM: utilization is the
share of time the engine was in an iteration, tensor activity the compute-bound share,
power rises with both, temperature follows power with a first-order lag, the SM clock
boosts while busy. Keys match ``collector.records.GpuSample`` fields.

Anchors (REFERENCE.md, nvidia_gpu_exporter captures of an H100 80GB HBM3): 81559 MiB
total, 700 W limit, 69.9 W idle, 41 C idle / 59 C at 629 W, SM clock 345 idle / 1980 MHz,
memory clock 2619 MHz; inference draws roughly 160-400 W.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM, EngineParams
from controlplane.sim.engine import EngineStats

# NVML clocks-event reasons (nvml.h nvmlClocksEventReason*).
REASON_GPU_IDLE = 0x1
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40

SM_CLOCK_IDLE_MHZ = 345.0
SM_CLOCK_MAX_MHZ = 1980.0
MEM_CLOCK_MHZ = 2619.0
# Linear fit of the two captured points (69.9 W, 41 C) and (629 W, 59 C).
TEMP_PER_W = (59.0 - 41.0) / (629.0 - 69.9)
TEMP_AT_0W = 41.0 - 69.9 * TEMP_PER_W
MEM_TEMP_PER_W = (55.0 - 48.0) / (629.0 - 69.9)
MEM_TEMP_AT_0W = 48.0 - 69.9 * MEM_TEMP_PER_W
THERMAL_TAU_S = 60.0
CUDA_CONTEXT_BYTES = 512 * 1024 * 1024


@dataclass
class GpuFaults:
    thermal_factor: float = 1.0  # >1: clocks divided by it, steps take that much longer
    last_xid: int = 0
    unhealthy: bool = False


@dataclass
class GpuModel:
    params: EngineParams = LLAMA31_8B_H100_VLLM
    index: int = 0
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    loaded: bool = True  # weights and KV pool allocated (False during cold start)
    faults: GpuFaults = field(default_factory=GpuFaults)
    temperature_c: float = 41.0
    memory_temperature_c: float = 48.0
    energy_j: float = 0.0
    _busy_s: float | None = None
    _compute_s: float | None = None

    # -- fault hooks --------------------------------------------------------------------

    def inject_thermal(self, factor: float = 1.6) -> None:
        if factor < 1.0:
            raise ValueError(f"thermal slowdown factor must be >= 1, got {factor}")
        self.faults.thermal_factor = factor

    def inject_xid(self, code: int = 79) -> None:
        """79: GPU has fallen off the bus; 48: double-bit ECC error; 94/95: contained or
        uncontained ECC errors. Any XID here marks the GPU unhealthy."""
        self.faults.last_xid = code
        self.faults.unhealthy = True

    def clear_faults(self) -> None:
        self.faults = GpuFaults()

    @property
    def step_time_factor(self) -> float:
        """Multiply engine step times by this (``engine.slowdown``)."""
        return self.faults.thermal_factor

    @property
    def healthy(self) -> bool:
        return not self.faults.unhealthy

    # -- sampling -----------------------------------------------------------------------

    def sample(self, stats: EngineStats, dt: float) -> dict[str, Any]:
        """Telemetry over the last ``dt`` seconds ending now; the first call has no
        history and reports the instantaneous state."""
        p = self.params
        busy_d = 0.0 if self._busy_s is None else stats.busy_s_total - self._busy_s
        comp_d = 0.0 if self._compute_s is None else stats.compute_bound_s_total - self._compute_s
        self._busy_s, self._compute_s = stats.busy_s_total, stats.compute_bound_s_total
        span = max(dt, 1e-9)
        util = min(1.0, max(0.0, busy_d / span))
        tensor = min(util, max(0.0, comp_d / span))
        dram = max(0.0, util - tensor) * p.memory_efficiency
        # Decode-heavy serving sits around 300-400 W, prefill-heavy bursts near 600 W.
        power = p.idle_power_w + util * 280.0 + tensor * 250.0
        thermal = self.faults.thermal_factor > 1.0
        if thermal:
            power = min(power, p.idle_power_w + 0.5 * (p.max_power_w - p.idle_power_w))
        self.energy_j += power * dt
        alpha = min(1.0, dt / THERMAL_TAU_S)
        target = TEMP_AT_0W + TEMP_PER_W * power + (25.0 if thermal else 0.0)
        self.temperature_c += alpha * (target - self.temperature_c)
        mem_target = MEM_TEMP_AT_0W + MEM_TEMP_PER_W * power
        self.memory_temperature_c += alpha * (mem_target - self.memory_temperature_c)
        sm_clock = SM_CLOCK_MAX_MHZ if util > 0 else SM_CLOCK_IDLE_MHZ
        reasons = 0 if util > 0 else REASON_GPU_IDLE
        if thermal:
            sm_clock = SM_CLOCK_MAX_MHZ / self.faults.thermal_factor
            reasons |= REASON_HW_THERMAL | REASON_SW_THERMAL
        used = (
            p.weights_bytes + stats.kv_pool_bytes + p.activation_reserve_bytes + CUDA_CONTEXT_BYTES
            if self.loaded
            else CUDA_CONTEXT_BYTES
        )
        return {
            "gpu": self.index,
            "uuid": self.uuid,
            "name": p.gpu_name,
            "healthy": self.healthy,
            "utilization": util,
            "tensor_active": tensor,
            "dram_active": dram,
            "memory_used_bytes": int(min(used, p.gpu_memory_bytes)),
            "memory_total_bytes": int(p.gpu_memory_bytes),
            "power_w": round(power, 1),
            "power_limit_w": p.max_power_w,
            "energy_j": self.energy_j,
            "temperature_c": round(self.temperature_c, 1),
            "memory_temperature_c": round(self.memory_temperature_c, 1),
            "sm_clock_mhz": round(sm_clock),
            "memory_clock_mhz": MEM_CLOCK_MHZ,
            "clock_event_reasons": reasons,
            "last_xid": self.faults.last_xid,
        }
