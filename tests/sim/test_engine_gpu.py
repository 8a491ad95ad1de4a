"""Simulated GPU telemetry follows the engine's state; faults show up as they would."""

from __future__ import annotations

import pytest

from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM
from controlplane.sim.engine import Engine, SimRequest
from controlplane.sim.gpu_model import (
    REASON_GPU_IDLE,
    REASON_HW_THERMAL,
    SM_CLOCK_IDLE_MHZ,
    SM_CLOCK_MAX_MHZ,
    GpuModel,
)

P = LLAMA31_8B_H100_VLLM


def busy_for(engine: Engine, seconds: float, *, prompt: int = 200, out: int = 5000) -> None:
    engine.submit(SimRequest(f"r{engine.stats().iterations_total}", 0.0, prompt, out))
    now = 0.0
    while now < seconds and engine.has_work():
        now += engine.step(now, horizon_s=seconds).duration_s


def test_idle_gpu_reads_like_an_idle_h100():
    gpu = GpuModel()
    e = Engine(P)
    gpu.sample(e.stats(), 1.0)
    s = gpu.sample(e.stats(), 30.0)
    assert s["utilization"] == 0.0
    assert s["power_w"] == pytest.approx(70.0)
    assert s["sm_clock_mhz"] == SM_CLOCK_IDLE_MHZ
    assert s["clock_event_reasons"] & REASON_GPU_IDLE
    assert s["memory_total_bytes"] == 81559 * 1024**2
    # vLLM preallocates: weights + KV pool + reserve, about 90% of the card.
    assert 0.88 < s["memory_used_bytes"] / s["memory_total_bytes"] < 0.92
    assert s["name"] == "NVIDIA H100 80GB HBM3" and s["healthy"] and s["last_xid"] == 0


def test_busy_engine_raises_utilization_power_clock_and_temperature():
    gpu = GpuModel()
    e = Engine(P)
    gpu.sample(e.stats(), 1.0)
    busy_for(e, 10.0)
    s = gpu.sample(e.stats(), 10.0)
    assert s["utilization"] > 0.9
    assert 300 < s["power_w"] < 700  # decode-heavy serving: a few hundred watts
    assert s["sm_clock_mhz"] == SM_CLOCK_MAX_MHZ
    for _ in range(20):  # a few minutes at that load warms the card
        busy_for(e, 10.0)
        s = gpu.sample(e.stats(), 10.0)
    assert 41.0 < s["temperature_c"] < 59.0
    assert s["energy_j"] > 300 * 200


def test_thermal_fault_lowers_clocks_and_slows_steps():
    gpu = GpuModel()
    gpu.inject_thermal(1.5)
    e = Engine(P)
    e.slowdown = gpu.step_time_factor
    gpu.sample(e.stats(), 1.0)
    busy_for(e, 5.0)
    s = gpu.sample(e.stats(), 5.0)
    assert s["sm_clock_mhz"] == round(SM_CLOCK_MAX_MHZ / 1.5)
    assert s["clock_event_reasons"] & REASON_HW_THERMAL
    assert e.slowdown == 1.5
    with pytest.raises(ValueError, match=">= 1"):
        gpu.inject_thermal(0.5)


def test_xid_marks_the_gpu_unhealthy_until_cleared():
    gpu = GpuModel()
    gpu.inject_xid(79)
    s = gpu.sample(Engine(P).stats(), 1.0)
    assert (s["last_xid"], s["healthy"]) == (79, False)
    gpu.clear_faults()
    s = gpu.sample(Engine(P).stats(), 1.0)
    assert (s["last_xid"], s["healthy"]) == (0, True)
