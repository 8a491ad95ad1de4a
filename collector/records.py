"""Typed rows the collectors emit, and the ``Sink`` they emit into.

Field names match the store's column names, so a record becomes a row by
``dataclasses.astuple`` in the order ``COLUMNS`` gives. Durations are microseconds
(``_us``) in records and columns; the API presents milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished LLM request."""

    TABLE: ClassVar[str] = "requests"

    ts: datetime  # arrival (span start), UTC
    pool: str = ""
    model: str = ""
    replica: str = ""
    tenant: str = ""
    priority: str = ""
    status: str = "ok"  # "ok" | "error"
    error_type: str = ""
    finish_reason: str = ""
    trace_id: str = ""  # 32 hex chars, "" when unknown
    span_id: str = ""  # 16 hex chars
    ttft_us: int | None = None
    tpot_us: int | None = None
    e2e_us: int | None = None
    queue_us: int | None = None
    prefill_us: int | None = None
    decode_us: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    output_tokens_per_s: float | None = None
    cost_usd: float = 0.0
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of one GPU (or MIG device). ``None`` means not supported / not read."""

    TABLE: ClassVar[str] = "gpu_samples"

    ts: datetime
    node: str
    gpu: int
    uuid: str = ""
    name: str = ""
    mig_profile: str = ""
    pool: str = ""
    replica: str = ""
    source: str = "nvml"  # nvml | dcgm | agent | sim
    healthy: bool = True
    utilization: float | None = None  # 0..1
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    memory_temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    clock_event_reasons: int | None = None
    ecc_uncorrected: int | None = None
    remapped_rows_pending: int | None = None
    last_xid: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One scrape of one engine replica's /metrics. Counters arrive here as rates."""

    TABLE: ClassVar[str] = "replica_samples"

    ts: datetime
    pool: str
    replica: str
    model: str = ""
    engine: str = ""  # vllm | sglang | tgi | triton
    up: bool = True
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None  # 0..1
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    preemptions_per_s: float | None = None
    prefix_cache_hit_rate: float | None = None  # 0..1
    scrape_duration_s: float | None = None


def columns(record_type: type[Any]) -> list[str]:
    return [f.name for f in fields(record_type)]


def as_row(record: Any) -> tuple[Any, ...]:
    return tuple(getattr(record, f.name) for f in fields(record))


class Sink(Protocol):
    """Where collectors put records. Must not block for long: implementations enqueue."""

    def emit(self, records: Sequence[Any]) -> None: ...


class ListSink:
    """A sink that keeps everything in memory, for tests and small tools."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def emit(self, records: Sequence[Any]) -> None:
        self.records.extend(records)
