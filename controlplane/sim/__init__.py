"""The simulated fleet: engine model, GPU telemetry, traffic and virtual-time backtests.

Public entry points: ``engine.Engine`` (continuous batching, one replica),
``calibration.LLAMA31_8B_H100_VLLM`` (named parameters), ``gpu_model.GpuModel``,
``traffic`` (trace reader, synthetic patterns, fitted profile) and ``backtest.run_backtest``.
Submodules are imported on use so the live replica pulls in only what it needs.
"""

from __future__ import annotations
