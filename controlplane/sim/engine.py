"""A vLLM-style continuous-batching engine model, in simulated time.

The engine never sleeps: ``step(now_s)`` runs one scheduler iteration that starts at
``now_s`` and returns how long it takes and what happened at its end. A live replica calls
it in a loop and sleeps ``duration_s``; a backtest advances a virtual clock instead. Both
run this same code.

Scheduling follows vLLM v1: one token budget per iteration (``max_num_batched_tokens``)
spent on running sequences first (decode = 1 token, prefill = a chunk), then on waiting
requests in (priority, arrival) order while ``max_num_seqs`` and free KV blocks allow. KV
blocks of ``block_size`` tokens are allocated as tokens are computed; when a running
sequence needs a block and none is free, the lowest-priority, latest-arriving running
sequence is preempted by recompute (its blocks freed, its tokens computed again later).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM, EngineParams
from controlplane.sim.engine_types import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    EngineStats,
    RequestRejected,
    RequestTiming,
    SimRequest,
    StepResult,
)
from controlplane.sim.roofline import Roofline

__all__ = [
    "LLAMA31_8B_H100_VLLM",
    "Engine",
    "EngineParams",
    "EngineStats",
    "RequestRejected",
    "RequestTiming",
    "SimRequest",
    "StepResult",
]


@dataclass(slots=True, eq=False)  # identity equality: list.remove must not compare fields
class _Seq:
    req: SimRequest
    target: int  # tokens this request will generate in total
    key: tuple[int, float, int]
    num_tokens: int  # prompt + generated so far (kept in step with num_generated)
    num_generated: int = 0
    num_computed: int = 0
    blocks: int = 0
    scheduled_s: float | None = None
    first_token_s: float | None = None
    preemptions: int = 0
    is_running: bool = False


def _seq_key(s: _Seq) -> tuple[int, float, int]:
    return s.key


class Engine:
    """One replica's engine. Not thread-safe: the caller serializes access."""

    def __init__(self, params: EngineParams = LLAMA31_8B_H100_VLLM, *, ready_at_s: float = 0.0):
        self.params = params
        self.ready_at_s = ready_at_s
        self.slowdown = 1.0  # step time multiplier (thermal throttling, slow replica)
        self._now = 0.0  # engine clock: launch time, then each step's start (stats().ready)
        # The last step's fused run if it may be cut back (see ``truncate``).
        self._fused: tuple[list[_Seq], int, int, int, float, float, float, StepResult] | None = None
        self._free = params.num_gpu_blocks
        self._waiting: list[tuple[tuple[int, float, int], _Seq]] = []
        self._running: list[_Seq] = []
        self._ids: dict[str, _Seq] = {}
        self._seq_no = itertools.count()
        self._preemptions = 0
        self._prompt_tokens = 0
        self._gen_tokens = 0
        self._finished: dict[str, int] = {}
        self._iterations = 0
        self._busy_s = 0.0
        self._compute_s = 0.0
        self._roofline = Roofline(params)

    @classmethod
    def launch(
        cls, params: EngineParams, now_s: float, cold_start_s: float | None = None
    ) -> Engine:
        """An engine whose process starts at ``now_s``: it serves after the cold start."""
        delay = params.cold_start_s if cold_start_s is None else cold_start_s
        engine = cls(params, ready_at_s=now_s + delay)
        engine._now = now_s
        return engine

    # -- requests -----------------------------------------------------------------------

    def submit(self, req: SimRequest) -> None:
        p = self.params
        if req.id in self._ids:
            raise RequestRejected(f"request {req.id!r} is already in the engine")
        if req.input_tokens < 1 or req.output_tokens < 1:
            raise RequestRejected(
                f"request {req.id!r}: input_tokens ({req.input_tokens}) and output_tokens "
                f"({req.output_tokens}) must be >= 1"
            )
        if req.max_tokens is not None and req.max_tokens < 1:
            raise RequestRejected(f"request {req.id!r}: max_tokens must be >= 1")
        if req.input_tokens >= p.max_model_len:
            raise RequestRejected(
                f"request {req.id!r}: {req.input_tokens} prompt tokens exceed max_model_len "
                f"{p.max_model_len}"
            )
        target = req.output_tokens
        if req.max_tokens is not None:
            target = min(target, req.max_tokens)
        target = min(target, p.max_model_len - req.input_tokens)
        if self._blocks_for(req.input_tokens + target) > p.num_gpu_blocks:
            raise RequestRejected(
                f"request {req.id!r}: {req.input_tokens + target} tokens exceed the KV cache "
                f"({p.kv_cache_tokens} tokens)"
            )
        key = (req.priority, req.arrival_s, next(self._seq_no))
        seq = _Seq(req=req, target=target, key=key, num_tokens=req.input_tokens)
        self._ids[req.id] = seq
        heapq.heappush(self._waiting, (key, seq))

    def cancel(self, request_id: str, now_s: float | None = None) -> RequestTiming | None:
        """Abort a request (client went away); returns its timing, None if unknown."""
        seq = self._ids.pop(request_id, None)
        if seq is None:
            return None
        self._fused = None  # the run's sequences change: it can no longer be cut back
        if seq.is_running:
            self._running.remove(seq)
            seq.is_running = False
            self._free += seq.blocks
            seq.blocks = 0
        else:
            self._waiting = [(k, s) for k, s in self._waiting if s is not seq]
            heapq.heapify(self._waiting)
        self._finished[FINISH_ABORT] = self._finished.get(FINISH_ABORT, 0) + 1
        t = now_s if now_s is not None else seq.req.arrival_s
        return self._timing(seq, t, FINISH_ABORT)

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def in_flight(self) -> int:
        return len(self._ids)

    # -- iterations ---------------------------------------------------------------------

    def step(
        self, now_s: float, *, horizon_s: float | None = None, soft_horizon_s: float | None = None
    ) -> StepResult:
        """Run one iteration starting at ``now_s``.

        With ``horizon_s``, following decode-only iterations are fused into this call
        while nothing else can change (no admission, no block shortage, no finish before
        the last) and they start before ``horizon_s``; the outcome is the same as calling
        ``step`` once per iteration, only cheaper.

        With ``soft_horizon_s`` too (a request *may* arrive then), the fused run may go on
        past it but then stops short of any finish, and ``truncate(t)`` can cut it back to
        the iterations that started before ``t`` if a request does arrive at ``t``.
        Backtests pass the next policy tick as horizon and the next arrival as soft one.
        """
        self._fused = None
        self._now = now_s
        result = StepResult()
        if now_s < self.ready_at_s or not (self._running or self._waiting):
            return result
        self._iteration(now_s, result)
        # Finishes are only reported at the end of a step: fusing after an iteration that
        # finished a request would report it late.
        if horizon_s is not None and not result.finished:
            self._fuse_decode(now_s, horizon_s, result, soft_horizon_s)
        return result

    def truncate(self, until_s: float) -> float | None:
        """Cut the last step's fused decode run back to the iterations that start before
        ``until_s``; returns the step's new duration, or None if there is nothing to cut.
        Only runs that went past their soft horizon can be cut (they hold no finish)."""
        fused = self._fused
        if fused is None:
            return None
        seqs, k, n, ctx0, t0, elapsed, compute_s, result = fused
        k2, elapsed2, compute2 = self._decode_run(n, ctx0, k, until_s - t0)
        if k2 >= k:
            return None
        self._fused = None
        dk = k - k2
        bs = self.params.block_size
        out = result.tokens
        for s in seqs:
            s.num_computed -= dk
            s.num_generated -= dk
            s.num_tokens -= dk
            keep = -(-s.num_computed // bs)
            self._free += s.blocks - keep
            s.blocks = keep
            rid = s.req.id
            left = out[rid] - dk
            if left:
                out[rid] = left
            else:
                del out[rid]
        self._gen_tokens -= dk * n
        self._iterations -= dk
        self._busy_s -= elapsed - elapsed2
        self._compute_s -= compute_s - compute2
        result.duration_s -= elapsed - elapsed2
        result.iterations -= dk
        result.batched_tokens -= dk * n
        return result.duration_s

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.params.block_size)

    def _preempt(self, seq: _Seq, result: StepResult) -> None:
        self._running.remove(seq)
        seq.is_running = False
        self._free += seq.blocks
        seq.blocks = 0
        seq.num_computed = 0
        seq.preemptions += 1
        self._preemptions += 1
        result.preempted.append(seq.req.id)
        heapq.heappush(self._waiting, (seq.key, seq))

    def _iteration(self, now_s: float, result: StepResult) -> None:
        # The hot path of every simulation: plain locals, no per-sequence calls.
        p = self.params
        bs = p.block_size
        budget = p.max_num_batched_tokens
        sched: list[_Seq] = []
        news: list[int] = []
        preempted_now = False
        for seq in tuple(self._running):
            if budget <= 0:
                break
            if not seq.is_running:
                continue  # preempted earlier in this loop
            computed = seq.num_computed
            n_new = seq.num_tokens - computed
            if n_new > budget:
                n_new = budget
            need = -(-(computed + n_new) // bs) - seq.blocks
            while need > self._free:
                victim = max(self._running, key=_seq_key)
                self._preempt(victim, result)
                preempted_now = True
                if victim is seq:
                    break
            if not seq.is_running:
                continue
            self._free -= need
            seq.blocks += need
            sched.append(seq)
            news.append(n_new)
            budget -= n_new
        if preempted_now:
            # A sequence scheduled early in the loop may have been preempted later on.
            kept = [(s, n) for s, n in zip(sched, news, strict=True) if s.is_running]
            budget += sum(news) - sum(n for _, n in kept)
            sched = [s for s, _ in kept]
            news = [n for _, n in kept]
        else:
            waiting = self._waiting
            while waiting and budget > 0 and len(self._running) < p.max_num_seqs:
                seq = waiting[0][1]
                n_new = min(seq.num_tokens - seq.num_computed, budget)
                need = -(-n_new // bs)
                if need > self._free:
                    break  # FCFS: the head waits, nobody overtakes it
                heapq.heappop(waiting)
                self._free -= need
                seq.blocks = need
                if seq.scheduled_s is None:
                    seq.scheduled_s = now_s
                self._running.append(seq)
                seq.is_running = True
                sched.append(seq)
                news.append(n_new)
                budget -= n_new
        if not sched:
            return
        tokens = 0
        attn = 0.0
        kv_read = 0
        for seq, n in zip(sched, news, strict=True):
            c = seq.num_computed
            tokens += n
            attn += n * (c + n * 0.5)
            kv_read += c + n
        duration = self._duration(tokens, attn, kv_read, len(sched))
        end = now_s + duration
        self._account(result, duration, tokens)
        out = result.tokens
        finished = False
        emitted = 0
        for seq, n in zip(sched, news, strict=True):
            c = seq.num_computed + n
            seq.num_computed = c
            if c < seq.num_tokens:
                continue  # prefill chunk, no token yet
            seq.num_generated += 1
            seq.num_tokens += 1
            emitted += 1
            rid = seq.req.id
            out[rid] = out.get(rid, 0) + 1
            if seq.first_token_s is None:
                seq.first_token_s = end
                self._prompt_tokens += seq.req.input_tokens
                result.first_token.append(rid)
            if seq.num_generated >= seq.target:
                self._finish(seq, end, result)
                finished = True
        self._gen_tokens += emitted
        if finished:
            self._running = [s for s in self._running if s.is_running]

    def _duration(self, tokens: int, attn: float, kv_read_tokens: int, n_seqs: int) -> float:
        duration, compute = self._roofline.step(tokens, attn, kv_read_tokens, n_seqs, self.slowdown)
        self._compute_s += compute
        return duration

    def _account(self, result: StepResult, duration: float, tokens: int) -> None:
        result.duration_s += duration
        result.iterations += 1
        result.batched_tokens += tokens
        self._iterations += 1
        self._busy_s += duration

    def _finish(self, seq: _Seq, at_s: float, result: StepResult) -> None:
        """Release a finished sequence; the caller drops it from ``_running``."""
        rid = seq.req.id
        reason = FINISH_STOP if seq.target >= seq.req.output_tokens else FINISH_LENGTH
        seq.is_running = False
        self._free += seq.blocks
        seq.blocks = 0
        del self._ids[rid]
        self._finished[reason] = self._finished.get(reason, 0) + 1
        result.finished[rid] = reason
        result.completed.append(self._timing(seq, at_s, reason))

    def _timing(self, seq: _Seq, finish_s: float, reason: str) -> RequestTiming:
        return RequestTiming(
            id=seq.req.id,
            arrival_s=seq.req.arrival_s,
            scheduled_s=seq.scheduled_s,
            first_token_s=seq.first_token_s,
            finish_s=finish_s,
            prompt_tokens=seq.req.input_tokens,
            generation_tokens=seq.num_generated,
            finish_reason=reason,
            preemptions=seq.preemptions,
            priority=seq.req.priority,
        )

    # -- fused decode -------------------------------------------------------------------

    def _waiting_blocked(self) -> bool:
        """True if the waiting head cannot be admitted and stays so while only decodes run
        (decodes only take blocks and keep the running count)."""
        if not self._waiting:
            return True
        p = self.params
        if len(self._running) >= p.max_num_seqs:
            return True
        head = self._waiting[0][1]
        budget = p.max_num_batched_tokens - len(self._running)
        if budget <= 0:
            return True
        return self._blocks_for(min(head.num_tokens, budget)) > self._free

    def _fuse_decode(
        self, now_s: float, horizon_s: float, result: StepResult, soft_s: float | None
    ) -> None:
        running = self._running
        n = len(running)
        if n == 0 or n > self.params.max_num_batched_tokens:
            return
        if any(s.num_tokens - s.num_computed != 1 for s in running):
            return
        if not self._waiting_blocked():
            return
        k_max = min(s.target - s.num_generated for s in running)
        bs = self.params.block_size

        def blocks_needed(k: int) -> int:
            return sum(-(-(s.num_computed + k) // bs) - s.blocks for s in running)

        if blocks_needed(k_max) > self._free:
            lo, hi = 0, k_max  # largest k with enough blocks
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if blocks_needed(mid) <= self._free:
                    lo = mid
                else:
                    hi = mid - 1
            k_max = lo
        ctx = sum(s.num_computed for s in running)
        t0 = now_s + result.duration_s
        k, elapsed, compute_s = self._decode_run(n, ctx, k_max, horizon_s - t0)
        truncatable = False
        if soft_s is not None and k > 0:
            k_soft, _, _ = self._decode_run(n, ctx, k, soft_s - t0)
            if k_soft < k:
                # Past the soft horizon: stop short of the first finish so the run can be
                # cut back cleanly if a request arrives.
                if k == k_max:
                    k, elapsed, compute_s = self._decode_run(n, ctx, k_max - 1, horizon_s - t0)
                truncatable = k > k_soft
        if k == 0:
            return
        self._compute_s += compute_s
        self._iterations += k
        self._busy_s += elapsed
        if truncatable:
            self._fused = (list(running), k, n, ctx, t0, elapsed, compute_s, result)
        t = t0 + elapsed
        result.duration_s += elapsed
        result.iterations += k
        result.batched_tokens += n * k
        out = result.tokens
        finished = False
        for s in running:
            s.num_computed += k
            s.num_generated += k
            s.num_tokens += k
            new_blocks = -(-s.num_computed // bs) - s.blocks
            self._free -= new_blocks
            s.blocks += new_blocks
            rid = s.req.id
            out[rid] = out.get(rid, 0) + k
            if s.num_generated >= s.target:
                self._finish(s, t, result)
                finished = True
        self._gen_tokens += k * n
        if finished:
            self._running = [s for s in self._running if s.is_running]

    def _decode_run(self, n: int, ctx: int, k_max: int, room_s: float) -> tuple[int, float, float]:
        return self._roofline.decode_run(n, ctx, k_max, room_s, self.slowdown)

    # -- observation --------------------------------------------------------------------

    def stats(self) -> EngineStats:
        p = self.params
        used = p.num_gpu_blocks - self._free
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_usage=used / p.num_gpu_blocks,
            num_gpu_blocks=p.num_gpu_blocks,
            used_blocks=used,
            num_preemptions_total=self._preemptions,
            prompt_tokens_total=self._prompt_tokens,
            generation_tokens_total=self._gen_tokens,
            prefix_cache_queries_total=self._prompt_tokens,
            prefix_cache_hits_total=0,
            request_success_total=dict(self._finished),
            iterations_total=self._iterations,
            busy_s_total=self._busy_s,
            compute_bound_s_total=self._compute_s,
            weights_bytes=p.weights_bytes,
            kv_pool_bytes=p.num_gpu_blocks * p.block_size * p.kv_bytes_per_token,
            kv_used_bytes=used * p.block_size * p.kv_bytes_per_token,
            ready=self._now >= self.ready_at_s,
        )

    def is_ready(self, now_s: float) -> bool:
        return now_s >= self.ready_at_s

    def request_ids(self) -> Iterable[str]:
        return list(self._ids)
