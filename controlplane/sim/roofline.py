"""Step time of one engine iteration, as a roofline: the slower of compute and memory.

Every iteration reads the weights once and the KV cache of every scheduled token's
context (memory-bound term), and does ~2 FLOPs per parameter per batched token plus
attention (compute-bound term); a fixed CPU overhead per iteration and per scheduled
sequence is added, and the whole is multiplied by a slowdown factor (thermal throttling,
a slow replica). Pure arithmetic over ``EngineParams``; the engine keeps the accounts.
"""

from __future__ import annotations

import math

from controlplane.sim.calibration import EngineParams


class Roofline:
    def __init__(self, params: EngineParams) -> None:
        self.params = params
        self.flops_rate = params.peak_flops * params.compute_efficiency
        self.bytes_rate = params.hbm_bytes_per_s * params.memory_efficiency
        self.attn_flops = 4.0 * params.n_layers * params.hidden_size

    def step(
        self, tokens: int, attn: float, kv_read_tokens: int, n_seqs: int, slowdown: float
    ) -> tuple[float, float]:
        """(duration, compute-bound part of it) of one iteration; ``attn`` is the sum over
        scheduled sequences of new tokens x (context + new / 2)."""
        p = self.params
        compute = (2.0 * p.n_params * tokens + self.attn_flops * attn) / self.flops_rate
        memory = (p.weights_bytes + kv_read_tokens * p.kv_bytes_per_token) / self.bytes_rate
        bound = compute * slowdown if compute > memory else 0.0
        overhead = p.step_overhead_s + p.per_seq_overhead_s * n_seqs
        return (max(compute, memory) + overhead) * slowdown, bound

    def decode_run(
        self, n: int, ctx: int, k_max: int, room_s: float, slowdown: float
    ) -> tuple[int, float, float]:
        """How many decode-only iterations of ``n`` sequences (``ctx`` tokens computed)
        start within ``room_s``, at most ``k_max``, how long they take in total and the
        compute-bound part of that. Pure: the caller accounts for them.

        Memory-bound iterations take ``a + b * ctx_j`` with ``ctx_j = ctx + j n``, so their
        sum is a quadratic in the count, solved in closed form; compute-bound stretches
        (large batches) are walked one iteration at a time.
        """
        if k_max <= 0 or room_s <= 0:
            return 0, 0.0, 0.0
        p = self.params
        slow = slowdown
        over = p.step_overhead_s + p.per_seq_overhead_s * n
        c0 = (2.0 * p.n_params * n + self.attn_flops * n * 0.5) / self.flops_rate
        c1 = self.attn_flops / self.flops_rate
        m0 = (p.weights_bytes + n * p.kv_bytes_per_token) / self.bytes_rate
        m1 = p.kv_bytes_per_token / self.bytes_rate
        k = 0
        elapsed = 0.0
        compute_s = 0.0
        # Compute-bound prefix: walk it (memory time grows faster with context, so once
        # memory-bound, an iteration stays memory-bound).
        while k < k_max and elapsed < room_s and c0 + c1 * ctx > m0 + m1 * ctx:
            comp = (c0 + c1 * ctx) * slow
            elapsed += comp + over * slow
            compute_s += comp
            ctx += n
            k += 1
        if k < k_max and elapsed < room_s:
            # Iteration j (from here) lasts a + b j; S(j) = j a + b j (j - 1) / 2 is the
            # time before it starts. Count iterations with S(j) < room and j < k_max - k.
            a = (m0 + m1 * ctx + over) * slow
            b = m1 * n * slow
            room = room_s - elapsed
            if math.isinf(room):
                j = k_max - k
            elif b > 0:
                # Largest j with a j + b j (j - 1) / 2 < room, then the count is j + 1.
                half = a - b / 2
                j = int((-half + math.sqrt(half * half + 2 * b * room)) / b)
            else:
                j = int(room / a)
            j = min(j, k_max - k)
            while j > 0 and j * a + b * j * (j - 1) / 2 >= room:
                j -= 1
            while j < k_max - k and (j + 1) * a + b * (j + 1) * j / 2 < room:
                j += 1
            more = min(j + 1, k_max - k)
            elapsed += more * a + b * more * (more - 1) / 2
            k += more
        return k, elapsed, compute_s
