"""Which request rows keep their trace and span ids.

Random 128-bit trace ids and 64-bit span ids cannot be compressed: 24 of the ~55 bytes a
request row takes on disk. Like Prometheus exemplars, Governor can keep the ids only
where someone will want to jump to the trace: failed requests, slow requests, and a
deterministic sample (by trace id, so every row of one trace makes the same choice).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from collector.records import RequestRecord

TraceIdMode = Literal["all", "exemplars", "none"]


@dataclass(frozen=True)
class TraceIdPolicy:
    mode: TraceIdMode = "all"
    sample_ratio: float = 0.01  # share of ordinary requests that keep ids in exemplar mode
    slow_ttft_us: int = 1_000_000  # requests at least this slow keep their ids
    slow_e2e_us: int = 30_000_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be within 0..1, got {self.sample_ratio}")

    def keeps(self, rec: RequestRecord) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "none" or not rec.trace_id:
            return False
        if rec.status != "ok":
            return True
        if (rec.ttft_us or 0) >= self.slow_ttft_us or (rec.e2e_us or 0) >= self.slow_e2e_us:
            return True
        try:
            bucket = int(rec.trace_id[:8], 16) / 0xFFFFFFFF
        except ValueError:
            return False
        return bucket < self.sample_ratio

    def apply(self, rec: RequestRecord) -> RequestRecord:
        if self.keeps(rec) or not (rec.trace_id or rec.span_id):
            return rec
        return dataclasses.replace(rec, trace_id="", span_id="")
