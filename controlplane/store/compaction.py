"""Compaction of the hourly rollups: each month partition merged into one part.

Why: the SLO engine's longest read, 30 days of ``requests_1h``/``requests_1h_pool``
(the first cycle of a new SLO set), costs by the parts it opens more than by the rows
it sums. Background merges leave a month partition in 5-11 parts of one or two days
each (the merge selector does not merge parts of very unequal sizes, and a closed month
gets no new parts to merge with), so each part holds every series for its days, a
granule spans dozens of series, and reading the 14 series of the tenant-level SLOs
decompresses nearly all of them. One part per month keeps each series' hours together.
``OPTIMIZE ... PARTITION ID ... FINAL`` does that merge; the rows' sums do not change
(the tables aggregate on merge), only their layout. Measured in BENCHMARKS.md.

The job runs once a day at ``store.compaction.hour_utc`` (default 03:00 UTC) and merges
only the partitions holding more than ``max_parts`` parts: a closed month once, the
current one once per run (rewriting it: ~15 s of one core at the end of a month of 100M
requests), at a quiet hour since it takes CPU from everything else. The merge runs on
a connection of its own (``Store.optimize_partition``: on the embedded store, not in
the session every other call waits for); a ClickHouse server reports a merge longer
than ``query_timeout_s`` as an error (and goes on merging). Only the hourly tables: the
per-minute rollups are read for edge minutes, a few ranges of granules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controlplane.clock import Clock, SystemClock
from controlplane.errors import GovernorError
from controlplane.server import register_builder
from controlplane.store.base import Store, check_identifier

if TYPE_CHECKING:
    from controlplane.server import AppContext

log = logging.getLogger(__name__)

HOURLY_ROLLUPS = ("requests_1h", "requests_1h_pool")


@dataclass(frozen=True)
class Partition:
    table: str
    partition_id: str
    parts: int
    rows: int


@dataclass(frozen=True)
class Compacted:
    partition: Partition
    seconds: float
    error: str = ""  # the engine's message if the merge failed


def fragmented(store: Store, tables: Sequence[str], max_parts: int) -> list[Partition]:
    """Partitions of ``tables`` holding more than ``max_parts`` active parts."""
    rows = store.query(
        "SELECT toString(table), partition_id, toUInt64(count()), toUInt64(sum(rows))"
        " FROM system.parts WHERE database = {db:String} AND active"
        " AND table IN {tables:Array(String)} GROUP BY table, partition_id"
        " HAVING count() > {max_parts:UInt32} ORDER BY table, partition_id",
        {"db": store.database, "tables": list(tables), "max_parts": max_parts},
    ).rows
    return [Partition(str(t), str(p), int(n), int(r)) for t, p, n, r in rows]


def compact(
    store: Store,
    tables: Sequence[str] = HOURLY_ROLLUPS,
    *,
    max_parts: int = 1,
    stopping: Callable[[], bool] = lambda: False,
) -> list[Compacted]:
    """Merge every partition of ``tables`` that has more than ``max_parts`` parts into
    one; a failed merge is reported in its ``Compacted`` and the others still run.
    ``stopping`` is asked before each partition (a stop waits for one merge at most)."""
    if max_parts < 1:
        raise ValueError(f"max_parts must be at least 1, got {max_parts}")
    for t in tables:
        check_identifier(t, "table name")
    out = []
    for p in fragmented(store, tables, max_parts):
        if stopping():
            break
        start = time.perf_counter()
        try:
            store.optimize_partition(p.table, p.partition_id)
        except GovernorError as exc:
            log.warning("compacting %s partition %s failed: %s", p.table, p.partition_id, exc)
            out.append(Compacted(p, time.perf_counter() - start, str(exc)))
            continue
        out.append(Compacted(p, time.perf_counter() - start))
        log.info("compacted %s partition %s: %d parts, %d rows, %.1f s",
                 p.table, p.partition_id, p.parts, p.rows, out[-1].seconds)  # fmt: skip
    return out


def seconds_until_hour(now: float, hour_utc: int) -> float:
    """Seconds from ``now`` to the next ``hour_utc``:00 UTC (a full day at that instant)."""
    day = 86_400
    return (hour_utc * 3600 - now) % day or day


class Compactor:
    """Component: runs ``compact`` daily at ``hour_utc``:00 UTC in a thread of its own."""

    name = "rollup-compaction"

    def __init__(
        self, store: Store, hour_utc: int = 3, *, max_parts: int = 1, clock: Clock | None = None
    ) -> None:
        if not 0 <= hour_utc <= 23:
            raise ValueError(f"hour_utc must be 0-23, got {hour_utc}")
        self.store, self.hour_utc, self.max_parts = store, hour_utc, max_parts
        self.clock = clock or SystemClock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.compacted = 0  # partitions merged
        self.last_error = ""
        self.next_run: float | None = None  # unix seconds

    def run_once(self) -> list[Compacted]:
        try:
            done = compact(self.store, max_parts=self.max_parts, stopping=self._stop.is_set)
        except GovernorError as exc:
            self.last_error = str(exc)
            log.warning("rollup compaction failed: %s", exc)
            return []
        except Exception as exc:  # a bug: said, and the job keeps its schedule
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("rollup compaction failed")
            return []
        self.runs += 1
        self.compacted += sum(1 for c in done if not c.error)
        errors = [c.error for c in done if c.error]
        self.last_error = errors[0] if errors else ""
        return done

    def _loop(self) -> None:
        while True:
            delay = seconds_until_hour(self.clock.now(), self.hour_utc)
            self.next_run = self.clock.now() + delay
            if self._stop.wait(delay):
                return
            self.run_once()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def health(self) -> dict[str, Any]:
        return {
            "running": self._thread is not None,
            "hour_utc": self.hour_utc,
            "next_run": self.next_run,
            "runs": self.runs,
            "partitions_compacted": self.compacted,
            "last_error": self.last_error,
        }


@register_builder
def build(ctx: AppContext) -> None:
    cfg = ctx.config.store.compaction
    if cfg.enabled:
        ctx.add(Compactor(ctx.store, cfg.hour_utc, max_parts=cfg.max_parts, clock=ctx.clock))
