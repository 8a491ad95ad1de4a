"""Values the engine takes and returns: requests, per-request timings, step results,
stats. Re-exported by ``controlplane.sim.engine``, which is where callers import them."""

from __future__ import annotations

from dataclasses import dataclass, field

from controlplane.sim.errors import SimError

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"


class RequestRejected(SimError, ValueError):
    """The engine cannot take this request (bad sizes, too long, duplicate id)."""


@dataclass(frozen=True)
class SimRequest:
    """``output_tokens`` is how many tokens the model would generate before stopping;
    ``max_tokens`` (the client's cap) ends it earlier with finish reason ``length``.
    Priorities follow vLLM: a lower number is scheduled first."""

    id: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    max_tokens: int | None = None
    priority: int = 0


@dataclass(frozen=True)
class RequestTiming:
    """Per-request timestamps (engine time, seconds) for vLLM-style histograms."""

    id: str
    arrival_s: float
    scheduled_s: float | None
    first_token_s: float | None
    finish_s: float
    prompt_tokens: int
    generation_tokens: int
    finish_reason: str
    preemptions: int
    priority: int

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def queue_s(self) -> float | None:
        return None if self.scheduled_s is None else self.scheduled_s - self.arrival_s

    @property
    def prefill_s(self) -> float | None:
        if self.first_token_s is None or self.scheduled_s is None:
            return None
        return self.first_token_s - self.scheduled_s

    @property
    def decode_s(self) -> float | None:
        return None if self.first_token_s is None else self.finish_s - self.first_token_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (vLLM's TPOT / mean ITL)."""
        d = self.decode_s
        if d is None or self.generation_tokens < 2:
            return None
        return d / (self.generation_tokens - 1)


@dataclass
class StepResult:
    """What one call to ``step`` did. ``duration_s`` is 0 when there was nothing to do;
    every event happened at ``now_s + duration_s``."""

    duration_s: float = 0.0
    first_token: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)
    preempted: list[str] = field(default_factory=list)
    completed: list[RequestTiming] = field(default_factory=list)
    iterations: int = 0
    batched_tokens: int = 0

    @property
    def idle(self) -> bool:
        return self.iterations == 0


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_usage: float  # 0..1 of the KV block pool
    num_gpu_blocks: int
    used_blocks: int
    num_preemptions_total: int
    prompt_tokens_total: int
    generation_tokens_total: int
    prefix_cache_queries_total: int
    prefix_cache_hits_total: int  # prefix reuse is not modelled: always 0
    request_success_total: dict[str, int]
    iterations_total: int
    busy_s_total: float  # time spent in iterations
    compute_bound_s_total: float  # part of busy time limited by FLOPs (tensor activity)
    weights_bytes: float
    kv_pool_bytes: float
    kv_used_bytes: float
    ready: bool  # the engine clock (launch time or last step start) is past the cold start
