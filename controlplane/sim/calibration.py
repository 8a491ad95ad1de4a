"""Named engine configurations: the numbers behind the simulated replica.

``EngineParams`` describes one (model, GPU, engine) combination. Step time follows a
roofline: every scheduler iteration reads the weights once and the KV cache of every
scheduled sequence (memory-bound term) and does ~2 FLOPs per parameter per batched token
plus attention (compute-bound term); the slower of the two plus a fixed CPU overhead per
iteration and per sequence is the step time. Sources and the comparison with published
figures are in ``docs/SIM.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controlplane.sim.errors import SimError

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class EngineParams:
    name: str
    model: str
    # Model shape (bf16 weights and KV cache).
    n_params: float
    n_layers: int
    hidden_size: int
    kv_bytes_per_token: int
    weights_bytes: float
    # GPU.
    gpu_name: str
    gpu_memory_bytes: int
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bytes_per_s: float
    # Achieved fractions of peak: matmul efficiency in prefill, HBM efficiency in decode.
    compute_efficiency: float
    memory_efficiency: float
    # Engine (vLLM defaults unless stated in docs/SIM.md).
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: float = 2.0 * GIB  # activation peak + CUDA graphs + non-torch
    block_size: int = 16
    # vLLM v1 defaults for the API server on >= 70 GiB GPUs other than A100
    # (vllm/engine/arg_utils.py get_batch_defaults).
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131072
    step_overhead_s: float = 0.0015  # scheduler + sampling + launch, per iteration
    per_seq_overhead_s: float = 0.000012  # per scheduled sequence (input prep, detokenize)
    cold_start_s: float = 60.0  # process start to first servable request
    # API server work outside engine iterations (HTTP, tokenization, detokenization):
    # virtual-time drivers hand requests to the engine this much after they arrive. Fitted
    # to the low-load TTFT gap against vLLM's CI figures (docs/SIM.md).
    frontend_s: float = 0.012
    # Power envelope used by the GPU model.
    idle_power_w: float = 70.0
    max_power_w: float = 700.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append(f"gpu_memory_utilization {self.gpu_memory_utilization} not in (0, 1]")
        if self.block_size <= 0:
            problems.append(f"block_size {self.block_size} must be > 0")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            problems.append("max_num_seqs and max_num_batched_tokens must be > 0")
        if self.num_gpu_blocks <= 0:
            problems.append(
                f"no KV cache left: {self.gpu_memory_bytes} B x {self.gpu_memory_utilization} "
                f"minus weights {self.weights_bytes:.0f} B and reserve"
            )
        if problems:
            raise SimError(f"invalid engine params {self.name!r}: " + "; ".join(problems))

    @property
    def kv_cache_bytes(self) -> float:
        return (
            self.gpu_memory_bytes * self.gpu_memory_utilization
            - self.weights_bytes
            - self.activation_reserve_bytes
        )

    @property
    def num_gpu_blocks(self) -> int:
        return int(self.kv_cache_bytes // (self.kv_bytes_per_token * self.block_size))

    @property
    def kv_cache_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def with_(self, **changes: object) -> EngineParams:
        return replace(self, **changes)  # type: ignore[arg-type]


def _llama31_8b_kv_bytes() -> int:
    # 32 layers x 8 KV heads (GQA) x head dim 128 x (K and V) x 2 bytes (bf16).
    return 32 * 8 * 128 * 2 * 2


LLAMA31_8B_H100_VLLM = EngineParams(
    name="llama31-8b-h100-vllm",
    model="meta-llama/Llama-3.1-8B-Instruct",
    n_params=8.03e9,
    n_layers=32,
    hidden_size=4096,
    kv_bytes_per_token=_llama31_8b_kv_bytes(),
    weights_bytes=8.03e9 * 2,  # bf16: 16.06 GB = 14.96 GiB
    gpu_name="NVIDIA H100 80GB HBM3",
    gpu_memory_bytes=81559 * MIB,
    peak_flops=989e12,
    hbm_bytes_per_s=3.35e12,
    compute_efficiency=0.55,
    memory_efficiency=0.75,
)

# The same model on an H200 (141 GB, 4.8 TB/s): used only to compare with vLLM's CI
# figures, which are measured on H200. Not a separately calibrated configuration.
LLAMA31_8B_H200_VLLM = LLAMA31_8B_H100_VLLM.with_(
    name="llama31-8b-h200-vllm",
    gpu_name="NVIDIA H200",
    gpu_memory_bytes=143771 * MIB,
    hbm_bytes_per_s=4.8e12,
)

PARAMS: dict[str, EngineParams] = {p.name: p for p in (LLAMA31_8B_H100_VLLM, LLAMA31_8B_H200_VLLM)}


def get_params(name: str) -> EngineParams:
    try:
        return PARAMS[name]
    except KeyError:
        known = ", ".join(sorted(PARAMS))
        raise SimError(f"unknown engine configuration {name!r}; known: {known}") from None
