"""The named configuration against published figures, with stated tolerances.

These are functional checks of the model (simulated time), not timings of the test.
Sources and the full comparison table are in docs/SIM.md.
"""

from __future__ import annotations

import pytest

from controlplane.sim.calibration import (
    LLAMA31_8B_H100_VLLM,
    LLAMA31_8B_H200_VLLM,
    PARAMS,
    get_params,
)
from controlplane.sim.errors import SimError
from controlplane.sim.single import poisson, run_engine, sharegpt_like, summarize

P = LLAMA31_8B_H100_VLLM

# LambdaLabsML/vllm-benchmark results/prompt_10/1xH100-80GB-SXM/
# Meta-Llama-3-8B-Instruct_tp1_len2048.json: 10 ShareGPT prompts sent at once.
LAMBDA_INPUT = [13, 25, 27, 10, 329, 29, 399, 328, 4, 205]
LAMBDA_OUTPUT = [120, 429, 233, 194, 101, 741, 9, 3, 6, 31]
LAMBDA_MEDIAN_TPOT_MS = 7.558


def test_model_shape_and_memory_accounting_of_llama31_8b_on_h100():
    assert P.kv_bytes_per_token == 131072  # 32 layers x 8 KV heads x 128 x K,V x bf16
    assert P.weights_bytes == pytest.approx(16.06e9, rel=0.01)
    # KV pool = 90% of 81559 MiB minus weights and a 2 GiB reserve, in 16-token blocks.
    assert 430_000 < P.kv_cache_tokens < 470_000
    assert P.kv_cache_tokens % P.block_size == 0


def test_single_replica_decode_matches_lambda_h100_within_15_percent():
    s = summarize(
        run_engine(P, [(0.0, i, o) for i, o in zip(LAMBDA_INPUT, LAMBDA_OUTPUT, strict=True)])
    )
    assert s.median_tpot_ms == pytest.approx(LAMBDA_MEDIAN_TPOT_MS, rel=0.15)


@pytest.mark.parametrize(
    ("qps", "published_ttft_ms", "published_itl_ms"),
    [
        pytest.param(1.0, 22.76, 7.649, id="vLLM CI on H200 at 1 QPS"),
        pytest.param(4.0, 25.52, 9.710, id="vLLM CI on H200 at 4 QPS"),
    ],
)
def test_low_load_h200_ttft_within_20_and_itl_within_40_percent(
    qps, published_ttft_ms, published_itl_ms
):
    # Same model on an H200 to compare with vLLM's CI table (H200, ShareGPT, 200 prompts).
    s = summarize(
        run_engine(LLAMA31_8B_H200_VLLM, poisson(qps, sharegpt_like(200, seed=1), seed=2))
    )
    assert s.median_ttft_ms == pytest.approx(published_ttft_ms, rel=0.2)
    assert 0.6 * published_itl_ms < s.median_tpot_ms < 1.4 * published_itl_ms


def test_saturated_throughput_is_within_half_to_one_and_a_half_of_published():
    # vLLM PR #18566: 1000 ShareGPT prompts at once, 32.42 req/s, median TPOT 48.84 ms.
    s = summarize(run_engine(P, poisson(float("inf"), sharegpt_like(1000, seed=3))))
    assert 0.5 < s.request_throughput / 32.42 < 1.5
    assert 0.5 < s.median_tpot_ms / 48.84 < 1.5


def test_batching_small_decodes_is_nearly_free_as_a_memory_bound_roofline_predicts():
    # Published A100 sweep (johnmusgrave.com, 1024 in / 128 out): concurrency 8 gives
    # 6.6x the throughput of 1. The H100's higher FLOP/byte ratio makes this at least as
    # true here.
    def throughput(c: int) -> float:
        return summarize(run_engine(P, [(0.0, 1024, 128)] * c)).output_throughput

    assert throughput(8) / throughput(1) > 6.0


def test_prefill_is_compute_bound_and_scales_with_tokens():
    from controlplane.sim.engine import Engine, SimRequest

    def prefill_time(tokens: int) -> float:
        e = Engine(P)
        e.submit(SimRequest("r", 0.0, tokens, 1))
        return e.step(0.0).duration_s

    t2k, t8k = prefill_time(2048), prefill_time(8192)
    assert 3.5 < t8k / t2k < 4.5  # roughly linear: FLOPs, not bytes, dominate


def test_named_configurations_are_looked_up_by_name():
    assert get_params("llama31-8b-h100-vllm") is P
    assert set(PARAMS) == {"llama31-8b-h100-vllm", "llama31-8b-h200-vllm"}
    with pytest.raises(SimError, match="known: llama31-8b-h100-vllm"):
        get_params("gpt-5")


def test_impossible_parameters_are_refused_with_the_reason():
    with pytest.raises(SimError, match="no KV cache left"):
        P.with_(gpu_memory_utilization=0.2)
