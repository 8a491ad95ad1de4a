"""Invariants of the continuous-batching engine model."""

from __future__ import annotations

import math
import random

import pytest

from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM, EngineParams
from controlplane.sim.engine import Engine, RequestRejected, SimRequest
from controlplane.sim.single import poisson, run_engine, summarize

P = LLAMA31_8B_H100_VLLM


def tiny(blocks: int, **changes: object) -> EngineParams:
    """Same model and GPU, but only ``blocks`` KV blocks left after the reserve."""
    per_block = P.kv_bytes_per_token * P.block_size
    reserve = P.gpu_memory_bytes * P.gpu_memory_utilization - P.weights_bytes - blocks * per_block
    return P.with_(activation_reserve_bytes=reserve, **changes)


def drive(engine: Engine, reqs: list[SimRequest], *, fuse: bool = False):
    """Run to completion; check the KV invariant after every step."""
    reqs = sorted(reqs, key=lambda r: r.arrival_s)
    i, now = 0, 0.0
    tokens: dict[str, int] = {}
    timings = []
    preempted: list[str] = []
    max_used = 0
    while i < len(reqs) or engine.has_work():
        while i < len(reqs) and reqs[i].arrival_s <= now:
            engine.submit(reqs[i])
            i += 1
        horizon = reqs[i].arrival_s if i < len(reqs) else math.inf
        res = engine.step(now, horizon_s=horizon if fuse else None)
        st = engine.stats()
        assert 0 <= st.used_blocks <= st.num_gpu_blocks
        max_used = max(max_used, st.used_blocks)
        if res.idle:
            if horizon == math.inf and now < engine.ready_at_s:
                now = engine.ready_at_s
                continue
            now = max(horizon, engine.ready_at_s) if i < len(reqs) else engine.ready_at_s
            continue
        for rid, n in res.tokens.items():
            tokens[rid] = tokens.get(rid, 0) + n
        preempted += res.preempted
        timings += res.completed
        now += res.duration_s
    return timings, tokens, preempted, max_used


def random_requests(n: int, seed: int = 0, rate: float = 20.0) -> list[SimRequest]:
    rng = random.Random(seed)
    t = 0.0
    out = []
    for k in range(n):
        t += rng.expovariate(rate)
        out.append(SimRequest(f"r{k}", t, rng.randint(1, 3000), rng.randint(1, 600)))
    return out


def test_no_request_is_lost_and_tokens_are_conserved():
    reqs = random_requests(400, seed=1)
    engine = Engine(P)
    timings, tokens, _, _ = drive(engine, reqs)
    assert sorted(t.id for t in timings) == sorted(r.id for r in reqs)
    for r in reqs:
        assert tokens[r.id] == r.output_tokens
    st = engine.stats()
    assert st.prompt_tokens_total == sum(r.input_tokens for r in reqs)
    assert st.generation_tokens_total == sum(r.output_tokens for r in reqs)
    assert st.request_success_total == {"stop": len(reqs)}
    assert st.running == st.waiting == st.used_blocks == 0
    assert not engine.has_work()


def test_timings_are_ordered_for_every_request():
    timings, _, _, _ = drive(Engine(P), random_requests(200, seed=2))
    assert len(timings) == 200  # every request finished (and the loop below ran)
    for t in timings:
        assert t.arrival_s <= t.scheduled_s <= t.first_token_s <= t.finish_s
        assert t.ttft_s > 0 and t.queue_s >= 0


def test_kv_cache_never_exceeds_capacity_and_preemption_happens_under_pressure():
    # 100 blocks = 1600 tokens; 8 requests that grow to 600 tokens each need 4800.
    engine = Engine(tiny(100))
    reqs = [SimRequest(f"r{k}", 0.0, 200, 400) for k in range(8)]
    timings, tokens, preempted, max_used = drive(engine, reqs)
    assert preempted, "expected recompute preemptions when the KV cache runs out"
    assert engine.stats().num_preemptions_total == len(preempted)
    assert max_used <= 100
    assert all(tokens[r.id] == 400 for r in reqs)  # preemption loses no output
    assert sum(t.preemptions for t in timings) == len(preempted)


def test_preemption_picks_the_lowest_priority_latest_request():
    engine = Engine(tiny(60))
    reqs = [
        SimRequest("urgent", 0.0, 300, 400, priority=0),
        SimRequest("batch", 0.0, 300, 400, priority=5),
    ]
    timings, _, preempted, _ = drive(engine, reqs)
    assert preempted and set(preempted) == {"batch"}
    by_id = {t.id: t for t in timings}
    assert by_id["urgent"].finish_s < by_id["batch"].finish_s


def test_waiting_queue_serves_lower_priority_numbers_first():
    engine = Engine(P.with_(max_num_seqs=1))
    engine.submit(SimRequest("low", 0.0, 100, 5, priority=3))
    engine.submit(SimRequest("high", 0.0, 100, 5, priority=0))
    first = engine.step(0.0)
    assert first.first_token == ["high"]


def test_max_num_seqs_bounds_the_running_batch():
    engine = Engine(P.with_(max_num_seqs=4))
    for k in range(10):
        engine.submit(SimRequest(f"r{k}", 0.0, 50, 50))
    now = 0.0
    while engine.has_work():
        res = engine.step(now)
        assert engine.stats().running <= 4
        now += res.duration_s


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget():
    engine = Engine(P)
    engine.submit(SimRequest("long", 0.0, 20000, 2))
    iterations = []
    now = 0.0
    while True:
        res = engine.step(now)
        iterations.append(res.batched_tokens)
        now += res.duration_s
        if res.first_token:
            break
    assert iterations == [8192, 8192, 3616]


def test_max_tokens_caps_the_answer_with_finish_reason_length():
    engine = Engine(P)
    timings, tokens, _, _ = drive(engine, [SimRequest("r", 0.0, 10, 500, max_tokens=20)])
    assert tokens["r"] == 20
    assert timings[0].finish_reason == "length"


def test_cold_start_delays_service():
    engine = Engine.launch(P, now_s=0.0, cold_start_s=45.0)
    engine.submit(SimRequest("r", 0.0, 100, 10))
    assert engine.step(10.0).idle
    assert not engine.is_ready(10.0)
    timings, _, _, _ = drive(engine, [])
    assert timings[0].first_token_s >= 45.0
    assert timings[0].ttft_s >= 45.0


def test_cancel_frees_blocks_and_counts_an_abort():
    engine = Engine(P)
    engine.submit(SimRequest("r", 0.0, 1000, 100))
    engine.step(0.0)
    assert engine.stats().used_blocks > 0
    timing = engine.cancel("r", now_s=0.5)
    assert timing is not None and timing.finish_reason == "abort"
    st = engine.stats()
    assert st.used_blocks == 0 and st.running == 0
    assert st.request_success_total == {"abort": 1}
    assert engine.cancel("r") is None


@pytest.mark.parametrize(
    ("req", "message"),
    [
        pytest.param(SimRequest("a", 0, 0, 10), "must be >= 1", id="an empty prompt is refused"),
        pytest.param(SimRequest("b", 0, 10, 0), "must be >= 1", id="zero output is refused"),
        pytest.param(
            SimRequest("c", 0, 200_000, 10),
            "max_model_len",
            id="a prompt longer than the context is refused",
        ),
        pytest.param(
            SimRequest("d", 0, 10, 10, max_tokens=0),
            "max_tokens",
            id="max_tokens below one is refused",
        ),
    ],
)
def test_bad_requests_are_refused_with_a_reason(req, message):
    with pytest.raises(RequestRejected, match=message):
        Engine(P).submit(req)


def test_a_duplicate_id_is_refused_and_the_first_request_survives():
    engine = Engine(P)
    engine.submit(SimRequest("a", 0, 10, 10))
    with pytest.raises(RequestRejected, match="already"):
        engine.submit(SimRequest("a", 0, 20, 20))
    assert engine.in_flight() == 1


def test_fused_decode_steps_give_the_same_timings_as_single_steps():
    reqs = random_requests(150, seed=3, rate=8.0)
    single, _, _, _ = drive(Engine(P), reqs, fuse=False)
    fused, _, _, _ = drive(Engine(P), reqs, fuse=True)
    a = {t.id: t for t in single}
    b = {t.id: t for t in fused}
    assert a.keys() == b.keys()
    for rid, t in a.items():
        assert b[rid].first_token_s == pytest.approx(t.first_token_s, abs=1e-9)
        assert b[rid].finish_s == pytest.approx(t.finish_s, abs=1e-9)


def test_ttft_and_tpot_grow_with_load():
    lengths = [(1000, 200)] * 400
    medians = []
    for rate in (1.0, 10.0, 25.0, 40.0):
        s = summarize(run_engine(P, poisson(rate, lengths, seed=4)))
        medians.append((s.median_ttft_ms, s.median_tpot_ms))
    ttfts = [m[0] for m in medians]
    tpots = [m[1] for m in medians]
    assert ttfts == sorted(ttfts) and ttfts[-1] > 2 * ttfts[0]
    assert tpots == sorted(tpots) and tpots[-1] > 1.5 * tpots[0]


def test_slowdown_multiplies_step_time():
    a, b = Engine(P), Engine(P)
    b.slowdown = 1.5
    for e in (a, b):
        e.submit(SimRequest("r", 0.0, 500, 5))
    assert b.step(0.0).duration_s == pytest.approx(1.5 * a.step(0.0).duration_s)


def test_stats_report_readiness_from_the_engine_clock():
    assert Engine(P).stats().ready
    e = Engine.launch(P, now_s=100.0, cold_start_s=30.0)
    assert not e.stats().ready
    e.submit(SimRequest("r", 100.0, 10, 2))
    e.step(130.0)
    assert e.stats().ready
