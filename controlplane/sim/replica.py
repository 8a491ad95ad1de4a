"""A simulated vLLM replica: the engine model run in real time behind vLLM's HTTP surface.

``Replica`` owns one ``Engine`` and a thread that steps it: each step's duration is slept
in real time, then its tokens are handed to the waiting requests (one SSE chunk per step,
as vLLM streams). ``create_app`` serves it: OpenAI ``/v1/completions`` and
``/v1/chat/completions`` (streaming and not), ``/health`` (503 during the cold start),
``/v1/models``, vLLM's ``/metrics``, dcgm-exporter-style GPU metrics on
``/dcgm/metrics``, and fault injection on ``/admin/fault``. Each finished request becomes
a vLLM-shaped ``llm_request`` SERVER span on the injected tracer (OTLP/HTTP in
``governor sim replica``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from controlplane.clock import Clock, SystemClock
from controlplane.sim import wire
from controlplane.sim.engine import (
    LLAMA31_8B_H100_VLLM,
    Engine,
    EngineParams,
    EngineStats,
    RequestTiming,
    SimRequest,
    StepResult,
)
from controlplane.sim.errors import SimError
from controlplane.sim.replica_faults import Faults
from controlplane.sim.replica_metrics import GpuIdentity, VllmMetrics

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05
GPU_SAMPLE_INTERVAL_S = 1.0


class GpuSource(Protocol):
    """GPU telemetry from engine state: dcgm-exporter field name -> value."""

    def sample(
        self, stats: EngineStats, dt: float, faults: Faults, loaded: bool
    ) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class ReplicaConfig:
    name: str = "replica-0"
    pool: str = "chat-8b"
    params: EngineParams = LLAMA31_8B_H100_VLLM
    served_model: str = ""  # defaults to params.model
    cold_start_s: float = 5.0
    # Natural answer length when the client does not set ignore_eos: lognormal median.
    median_output_tokens: int = 200
    seed: int = 0
    gpu_index: int = 0
    hostname: str = "sim-node"

    @property
    def model(self) -> str:
        return self.served_model or self.params.model


@dataclass
class Waiter:
    """A request waiting for tokens; the engine thread hands it events via its loop."""

    rid: str
    request: wire.CompletionRequest
    tenant: str
    priority: str
    created: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, Any, Any]] = field(default_factory=asyncio.Queue)
    last_token_s: float | None = None

    def push(self, item: tuple[str, Any, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the request's event loop is gone (server stopping)
            pass


class ReplicaUnavailable(SimError):
    """The replica cannot take requests now (cold start, XID); ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Replica:
    def __init__(
        self,
        config: ReplicaConfig,
        *,
        clock: Clock | None = None,
        tracer: trace.Tracer | None = None,
        registry: CollectorRegistry | None = None,
        gpu: GpuSource | None = None,
        on_crash: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.tracer = tracer or trace.NoOpTracer()
        self.registry = registry or CollectorRegistry()
        self.metrics = VllmMetrics(self.registry, config.model, config.params.max_model_len)
        self.faults = Faults()
        self.gpu = gpu
        self.on_crash = on_crash
        self.identity = GpuIdentity(
            gpu=config.gpu_index,
            uuid="GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{config.pool}/{config.name}")),
            pci_bus_id=f"00000000:{(config.gpu_index + 9):02X}:00.0",
            model_name=config.params.gpu_name,
            hostname=config.hostname,
        )
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._waiters: dict[str, Waiter] = {}
        self._mono0 = self.clock.monotonic()
        self._wall0 = self.clock.now()
        self.engine = Engine.launch(config.params, 0.0, cold_start_s=config.cold_start_s)
        self._gpu_values: Mapping[str, float] = {}
        self._gpu_t = 0.0
        self._gpu_version = -1
        self._gpu_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.failed = False  # the engine thread died: health 503, requests refused

    # -- time ---------------------------------------------------------------------------

    def now(self) -> float:
        """Engine time: seconds since this replica launched."""
        return self.clock.monotonic() - self._mono0

    def _wall_ns(self, engine_s: float) -> int:
        return int((self._wall0 + engine_s) * 1e9)

    @property
    def ready(self) -> bool:
        return not self.failed and self.engine.is_ready(self.now())

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{self.config.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- requests -----------------------------------------------------------------------

    def submit(self, req: wire.CompletionRequest, tenant: str, priority: str) -> Waiter:
        """Queue a request in the engine; raises ``ReplicaUnavailable`` or ``RequestRejected``."""
        if self.failed:
            raise ReplicaUnavailable(503, "engine failed; see the replica's log")
        if not self.ready:
            raise ReplicaUnavailable(503, "replica is starting (cold start)")
        if self.faults.xid:
            raise ReplicaUnavailable(500, f"GPU error: Xid {self.faults.xid}")
        if req.model != self.config.model:
            raise ReplicaUnavailable(404, f"The model `{req.model}` does not exist.")
        prefix = "chatcmpl" if req.kind == wire.CHAT else "cmpl"
        rid = f"{prefix}-{uuid.uuid4().hex}"
        if req.ignore_eos:
            natural = req.max_tokens + 1  # generation ends at max_tokens: "length", as vLLM
        else:
            median = self.config.median_output_tokens
            natural = max(1, int(self._rng.lognormvariate(math.log(median), 0.8)))
        prio = int(priority) if priority.lstrip("-").isdigit() else 0
        waiter = Waiter(
            rid, req, tenant, priority, int(self.clock.now()), asyncio.get_running_loop()
        )
        with self._lock:
            self.engine.submit(
                SimRequest(rid, self.now(), req.prompt_tokens, natural, req.max_tokens, prio)
            )
            self._waiters[rid] = waiter
        self._wake.set()
        return waiter

    def cancel(self, rid: str) -> None:
        """The client went away: abort the request in the engine."""
        with self._lock:
            waiter = self._waiters.pop(rid, None)
            timing = self.engine.cancel(rid, self.now())
        if waiter is not None and timing is not None:
            self.metrics.observe_finished(timing)
            self._span(waiter, timing, error="client_disconnected")

    def fail_in_flight(self, error_type: str, message: str) -> None:
        """Abort everything in flight: clients get ``message``, spans ``error_type``."""
        now = self.now()
        with self._lock:
            waiters, self._waiters = self._waiters, {}
            timings = [self.engine.cancel(rid, now) for rid in list(waiters)]
        for waiter, timing in zip(waiters.values(), timings, strict=True):
            waiter.push(("error", message, None))
            if timing is not None:
                self._span(waiter, timing, error=error_type)

    def crash(self) -> None:
        log.error("replica %s: crash fault injected, exiting", self.config.name)
        if self.on_crash is not None:
            self.on_crash()

    # -- the engine thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the engine thread is the replica: fail loudly, not silently
            log.exception("replica %s: engine thread failed", self.config.name)
            self.failed = True
            self.fail_in_flight("engine_error", "engine failed")

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self.now()
            with self._lock:
                if self.faults.has("hang"):
                    result = StepResult()
                else:
                    self.engine.slowdown = self.faults.slowdown
                    result = self.engine.step(now)
                stats = self.engine.stats()
            self._sample_gpu(stats, now)
            if result.idle:
                self.metrics.update(stats)
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            end = now + result.duration_s
            delay = end - self.now()
            if delay > 0 and self._stop.wait(delay):
                return
            self._deliver(result, end)
            self.metrics.update(stats)

    def _deliver(self, result: StepResult, at_s: float) -> None:
        completed = {t.id: t for t in result.completed}
        with self._lock:
            waiters = {rid: self._waiters.get(rid) for rid in result.tokens}
            for rid in result.finished:
                self._waiters.pop(rid, None)
        for rid, n in result.tokens.items():
            waiter = waiters[rid]
            if waiter is None:
                continue
            if waiter.last_token_s is not None:
                gap = (at_s - waiter.last_token_s) / n
                for _ in range(n):
                    self.metrics.observe_inter_token(gap)
            waiter.last_token_s = at_s
            waiter.push(("tokens", n, result.finished.get(rid)))
        for rid, timing in completed.items():
            self.metrics.observe_finished(timing)
            waiter = waiters.get(rid)
            if waiter is not None:
                self._span(waiter, timing)

    def _sample_gpu(self, stats: EngineStats, now: float, force: bool = False) -> None:
        if self.gpu is None:
            return
        with self._gpu_lock:
            fresh = now - self._gpu_t < GPU_SAMPLE_INTERVAL_S and self._gpu_values
            if fresh and not force:
                return
            dt, self._gpu_t = max(0.0, now - self._gpu_t), now
            self._gpu_version = self.faults.version
            self._gpu_values = self.gpu.sample(stats, dt, self.faults, self.engine.is_ready(now))

    def gpu_values(self) -> Mapping[str, float]:
        """Latest GPU telemetry; re-sampled at once when a fault changed since."""
        if self.gpu is not None and self.faults.version != self._gpu_version:
            with self._lock:
                stats = self.engine.stats()
            self._sample_gpu(stats, self.now(), force=True)
        return self._gpu_values

    # -- spans --------------------------------------------------------------------------

    def _span(self, waiter: Waiter, t: RequestTiming, error: str | None = None) -> None:
        req = waiter.request
        attrs: dict[str, Any] = {
            "gen_ai.request.id": waiter.rid,
            "gen_ai.response.model": self.config.model,
            "gen_ai.request.max_tokens": req.max_tokens,
            "gen_ai.request.n": 1,
            "gen_ai.usage.prompt_tokens": t.prompt_tokens,
            "gen_ai.usage.completion_tokens": t.generation_tokens,
            "gen_ai.latency.e2e": t.e2e_s,
            "gen_ai.response.finish_reasons": [t.finish_reason],
            "governor.tenant": waiter.tenant,
            "governor.priority": waiter.priority,
        }
        if req.temperature is not None:
            attrs["gen_ai.request.temperature"] = req.temperature
        if req.top_p is not None:
            attrs["gen_ai.request.top_p"] = req.top_p
        for key, value in (
            ("gen_ai.latency.time_in_queue", t.queue_s),
            ("gen_ai.latency.time_in_scheduler", t.queue_s),
            ("gen_ai.latency.time_to_first_token", t.ttft_s),
            ("gen_ai.latency.time_in_model_prefill", t.prefill_s),
            ("gen_ai.latency.time_in_model_decode", t.decode_s),
        ):
            if value is not None:
                attrs[key] = value
        if t.scheduled_s is not None:
            attrs["gen_ai.latency.time_in_model_inference"] = t.finish_s - t.scheduled_s
        if error is not None:
            attrs["error.type"] = error
        span = self.tracer.start_span(
            "llm_request", kind=SpanKind.SERVER, attributes=attrs,
            start_time=self._wall_ns(t.arrival_s),
        )  # fmt: skip
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=self._wall_ns(max(t.finish_s, t.arrival_s)))
