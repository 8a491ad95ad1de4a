"""The lossless writer: a ``Sink`` that batches records into the store and survives outages.

``emit`` only appends to a bounded in-memory queue (drops counted when full) and wakes
one worker thread, which does all I/O::

    emit -> queue -> batches (by size or age; one per table, dedup token fixed here)
                        -> target.insert_rows(table, columns, rows, dedup_token=token)
    emit_arrow -> the same queue, counted in rows; Arrow chunks of one table are
                  concatenated into a batch -> target.insert_arrow(table, data, ...)
                        -> on a retryable error: spool (disk), back off, replay in order

While the spool holds anything, new batches join its tail, so delivery order is the
order batches were formed in. A spooled record is removed only after the target
accepted it; the token travels with it, so a replay of a batch the store had already
taken (ack lost, crash between insert and delete) is a no-op in the store. Replay merges
consecutive spooled batches that were never sent (up to ``replay_max_rows``) into one
insert under a token derived from theirs (see ``collector.spool.merge``); a batch that
was sent once is replayed alone under its own token.

A non-retryable error (``is_retryable(exc)`` is false: bad data) is narrowed down by
splitting the batch, so only the rows the target rejects are dead-lettered (counted and
logged); sub-batches get tokens derived from the parent's, which keeps replays idempotent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collector.errors import SpoolError, WriterError
from collector.records import as_row, columns
from collector.spool import Batch, DiskSpool, MemorySpool, Spool

log = logging.getLogger(__name__)

# Failing sub-inserts allowed while isolating bad rows of one batch; the rest of a batch
# that is bad throughout is dead-lettered without more attempts.
_BISECT_BUDGET = 64


class RowTarget(Protocol):
    """Where batches go: a controlplane ``Store`` fits."""

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> None: ...

    def insert_arrow(
        self, table: str, data: pa.Table, *, dedup_token: str | None = None
    ) -> None: ...


@dataclass(frozen=True)
class _Chunk:
    """Rows emitted as Arrow (``Writer.emit_arrow``), waiting in the queue."""

    table: str
    data: pa.Table


class _MonotonicClock(Protocol):
    def monotonic(self) -> float: ...


class _SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class WriterStats:
    queued: int
    pending_batches: int
    spool_batches: int
    spool_bytes: int
    inserted_rows: int
    replayed_batches: int
    dropped: dict[str, int]
    outage: bool


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "governor_writer_"
        self.dropped = Counter(
            p + "dropped_records", "Records dropped, by reason", ["reason"], registry=registry
        )
        self.inserted = Counter(
            p + "inserted_rows", "Rows the store accepted", ["table"], registry=registry
        )
        self.latency = Histogram(
            p + "insert_duration_seconds", "Duration of one batch insert", ["table"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            p + "insert_errors", "Failed inserts, by kind", ["kind"], registry=registry
        )
        self.replayed = Counter(
            p + "replayed_batches", "Spooled batches delivered", registry=registry
        )
        self.corrupt = Counter(
            p + "spool_corrupt_records", "Torn or corrupt spool records skipped",
            registry=registry,
        )  # fmt: skip
        self.queued = Gauge(p + "queued_records", "Records waiting in memory", registry=registry)
        self.spool_bytes = Gauge(p + "spool_bytes", "Bytes held in the spool", registry=registry)
        self.spool_batches = Gauge(
            p + "spool_batches", "Batches held in the spool", registry=registry
        )


class Writer:
    """Batching, spooling ``Sink``; see the module docstring."""

    name = "writer"

    def __init__(
        self,
        target: RowTarget,
        *,
        batch_size: int = 5000,
        flush_interval_s: float = 1.0,
        queue_max: int = 100_000,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        is_retryable: Callable[[BaseException], bool] = lambda exc: True,
        clock: _MonotonicClock | None = None,
        registry: CollectorRegistry | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        idle_wait_s: float = 0.25,
        replay_max_rows: int | None = None,
        backlog_max_rows: int | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("queue_max", queue_max)):
            if value < 1:
                raise WriterError(f"{name} must be at least 1, got {value}")
        if flush_interval_s <= 0 or backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise WriterError(
                "flush_interval_s and backoff_initial_s must be > 0 and backoff_max_s >= "
                f"backoff_initial_s (got {flush_interval_s}, {backoff_initial_s}, {backoff_max_s})"
            )
        self._target = target
        self._batch_size = batch_size
        # Replay merges spooled batches into fewer, larger inserts (the store's cost is
        # mostly per insert), so a backlog drains faster than it built up.
        self._replay_max_rows = replay_max_rows or 4 * batch_size
        # Off by default: when at least two batches' worth of rows wait (the store is
        # falling behind), one insert takes up to this many, for the same reason.
        self._backlog_max_rows = max(backlog_max_rows or batch_size, batch_size)
        self._interval = flush_interval_s
        self._queue_max = queue_max
        self._is_retryable = is_retryable
        self._clock: _MonotonicClock = clock or _SystemClock()
        self._backoff_initial, self._backoff_max = backoff_initial_s, backoff_max_s
        self._idle_wait = idle_wait_s
        self._m = _Metrics(registry or CollectorRegistry())
        self._dropped: dict[str, int] = {}
        self._inserted_rows = 0
        self._replayed = 0

        self._spool_dir = spool_dir
        self._spool_max = spool_max_bytes
        self._spool: Spool | None = None

        self._lock = threading.Lock()  # guards the queue and the counters below it
        self._queue: deque[Any] = deque()  # records and _Chunks
        self._rows = 0  # rows in the queue (a _Chunk holds many)
        self._oldest_at: float | None = None  # clock time the oldest queued record arrived
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._flushers = 0
        self._busy = False  # worker holds batches outside the queue

        self._pending: deque[Batch] = deque()  # formed, not yet delivered (worker only)
        self._retry_at = 0.0
        self._backoff = backoff_initial_s
        self._outage = False
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._drops_logged: dict[str, int] = {}
        self._drops_logged_at = float("-inf")
        self._m.queued.set_function(lambda: self._rows)

    # -- Sink -----------------------------------------------------------------------
    def emit(self, records: Sequence[Any]) -> None:
        """Enqueue ``records``; never blocks on I/O and never raises."""
        try:
            self._enqueue(len(records), lambda room: records if room >= len(records) else
                          records[:room])  # fmt: skip
        except Exception:  # the caller's thread must never see our failure
            log.exception("writer.emit failed")

    def emit_arrow(self, table: str, data: pa.Table) -> None:
        """Enqueue rows for ``table`` already typed as Arrow; same bounds as ``emit``."""
        try:
            self._enqueue(data.num_rows, lambda room: [_Chunk(table, data.slice(0, room))])
        except Exception:  # the caller's thread must never see our failure
            log.exception("writer.emit_arrow failed")

    def _enqueue(self, n: int, take: Callable[[int], Sequence[Any]]) -> None:
        """Queue ``n`` rows, or as many as there is room for: ``take(room)`` gives the
        queue items holding the first ``min(room, n)`` rows (``room`` >= 1)."""
        if n == 0:
            return
        if self._stopping.is_set():
            self._count_drop("stopped", n)
            return
        with self._lock:
            room = min(self._queue_max - self._rows, n)
            if room > 0:
                if not self._queue:
                    self._oldest_at = self._clock.monotonic()
                self._queue.extend(take(room))
                self._rows += room
            full = self._rows >= self._batch_size
        if room < n:
            self._count_drop("queue_full", n - max(room, 0))
        if full:
            self._wake.set()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Open the spool (replaying what a previous run left) and start the worker."""
        if self._thread is not None:
            return
        if self._stopping.is_set():
            raise WriterError("a stopped writer cannot be started again; make a new one")
        self._spool = self._open_spool()
        self._sync_spool_gauges()
        self._thread = threading.Thread(target=self._run, name="governor-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what can be delivered within ``timeout``; spool the rest; stop the worker."""
        if self._stopping.is_set():
            return
        self._stop_deadline = self._clock.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return
        self._thread.join(timeout + 5.0)  # the worker itself honours the deadline
        if self._thread.is_alive():
            log.error("writer: worker busy after stop(%.1f); held data may be lost", timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until everything emitted so far reached the target; False on timeout."""
        end = time.monotonic() + timeout
        with self._idle:
            self._flushers += 1
            try:
                self._wake.set()
                while not self._is_idle():
                    left = end - time.monotonic()
                    if left <= 0 or self._thread is None or not self._thread.is_alive():
                        return False
                    self._idle.wait(min(left, 0.05))
                return True
            finally:
                self._flushers -= 1

    def room(self) -> int:
        """Rows the queue can take now (``queue_max`` less those waiting): producers that
        can refuse a request ask this instead of letting ``emit`` drop the excess."""
        with self._lock:
            return self._queue_max - self._rows

    def stats(self) -> WriterStats:
        spool = self._spool
        with self._lock:
            return WriterStats(
                queued=self._rows,
                pending_batches=len(self._pending),
                spool_batches=spool.batches if spool else 0,
                spool_bytes=spool.bytes if spool else 0,
                inserted_rows=self._inserted_rows,
                replayed_batches=self._replayed,
                dropped=dict(self._dropped),
                outage=self._outage,
            )

    def health(self) -> dict[str, Any]:
        s = self.stats()
        return {
            "status": "spooling" if s.outage else "ok",
            "queued": s.queued,
            "spool_batches": s.spool_batches,
            "spool_bytes": s.spool_bytes,
            "dropped": s.dropped,
        }

    # -- worker ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._form_batches(force=self._flushers > 0)
                progressed = self._deliver_one()
                self._log_drops()
                self._notify_idle()
                if not progressed:
                    self._wake.wait(self._wait_time())
                    self._wake.clear()
            self._drain_on_stop()
        except Exception:
            log.exception("writer worker crashed; spooling what it holds")
            self._spool_pending()
        finally:
            if self._spool is not None:
                self._spool.close()
            self._notify_idle()

    def _log_drops(self) -> None:
        # emit() must not log (hot path); the worker reports new drops, at most every 10 s.
        now = self._clock.monotonic()
        if now - self._drops_logged_at < 10.0:
            return
        with self._lock:
            current = dict(self._dropped)
        new = {k: v - self._drops_logged.get(k, 0) for k, v in current.items()}
        new = {k: v for k, v in new.items() if v}
        if new:
            log.warning("writer: dropped records since last report: %s", new)
            self._drops_logged = current
            self._drops_logged_at = now

    def _wait_time(self) -> float:
        now = self._clock.monotonic()
        waits = [self._idle_wait]
        if self._retry_at > now:
            waits.append(self._retry_at - now)
        if self._oldest_at is not None:
            waits.append(max(0.0, self._oldest_at + self._interval - now))
        return max(0.001, min(waits))

    def _form_batches(self, *, force: bool) -> None:
        while True:
            with self._lock:
                n = self._rows
                if n == 0:
                    return
                due = self._oldest_at is not None and (
                    self._clock.monotonic() - self._oldest_at >= self._interval
                )
                if n < self._batch_size and not (force or due):
                    return
                cap = self._batch_size
                if n >= 2 * cap and not (self._outage or self._spool_has_data()):
                    cap = self._backlog_max_rows
                records = self._take(min(n, cap))
                self._oldest_at = self._clock.monotonic() if self._queue else None
                self._busy = True
            for batch in self._group(records):
                if self._spool_has_data() or self._outage:
                    self._spool_append(batch)
                else:
                    self._pending.append(batch)

    def _take(self, want: int) -> list[Any]:
        """Pop ``want`` rows off the queue (caller holds the lock); splits a chunk if needed."""
        out: list[Any] = []
        while want > 0 and self._queue:
            item = self._queue[0]
            if isinstance(item, _Chunk):
                if item.data.num_rows > want:
                    out.append(_Chunk(item.table, item.data.slice(0, want)))
                    self._queue[0] = _Chunk(item.table, item.data.slice(want))
                    self._rows -= want
                    return out
                self._queue.popleft()
                out.append(item)
                want -= item.data.num_rows
                self._rows -= item.data.num_rows
            else:
                out.append(self._queue.popleft())
                want -= 1
                self._rows -= 1
        return out

    def _group(self, records: list[Any]) -> list[Batch]:
        by_type: dict[type[Any], list[tuple[Any, ...]]] = {}
        chunks: dict[str, list[pa.Table]] = {}
        out = []
        for rec in records:
            if isinstance(rec, _Chunk):
                chunks.setdefault(rec.table, []).append(rec.data)
                continue
            try:
                by_type.setdefault(type(rec), []).append(as_row(rec))
            except TypeError:
                log.error("writer: dropping a %s: not a record dataclass", type(rec).__name__)
                self._count_drop("rejected", 1)
        for table_name, tables in chunks.items():
            try:
                joined = [pa.concat_tables(tables) if len(tables) > 1 else tables[0]]
            except pa.ArrowInvalid as exc:  # different schemas: keep them apart
                log.warning("writer: %s chunks with different schemas (%s)", table_name, exc)
                joined = tables
            out += [Batch(table_name, tuple(t.column_names), [], uuid.uuid4().hex, arrow=t)
                    for t in joined]  # fmt: skip
        for typ, rows in by_type.items():
            table = getattr(typ, "TABLE", None)
            if not isinstance(table, str):
                log.error("writer: dropping %d %s records without TABLE", len(rows), typ.__name__)
                self._count_drop("rejected", len(rows))
                continue
            out.append(Batch(table, tuple(columns(typ)), rows, uuid.uuid4().hex))
        return out

    def _deliver_one(self) -> bool:
        """Deliver the oldest batch (spool first); True if something moved."""
        if self._clock.monotonic() < self._retry_at:
            return False
        spool = self._spool
        if spool is not None and spool.batches:
            batch = spool.peek(self._replay_max_rows)
            if batch is None:
                self._sync_spool_gauges()
                return True
            if not self._insert(batch):
                return False
            before = spool.batches
            spool.pop()
            self._replayed += before - spool.batches
            self._m.replayed.inc(before - spool.batches)
            self._sync_spool_gauges()
            return True
        if self._pending:
            if not self._insert(self._pending[0]):
                # It may have reached the store (lost ack): never merge it on replay.
                self._pending[0] = replace(self._pending[0], attempted=True)
                self._spool_pending()
                return False
            self._pending.popleft()
            return True
        with self._lock:
            self._busy = False
        return False

    def _insert(self, batch: Batch) -> bool:
        """Insert ``batch``; False (and backoff set) on a retryable failure."""
        try:
            self._insert_isolating(batch, [_BISECT_BUDGET])
        except _Retry as r:
            self._m.errors.labels("retryable").inc()
            now = self._clock.monotonic()
            self._retry_at = now + self._backoff
            if not self._outage:
                log.warning(
                    "writer: insert into %s failed (%s); spooling and retrying with backoff",
                    batch.table, r.cause,
                )  # fmt: skip
            self._outage = True
            self._backoff = min(self._backoff * 2, self._backoff_max)
            return False
        if self._outage:
            log.info("writer: store accepts inserts again; replaying the spool in order")
        self._outage = False
        self._backoff = self._backoff_initial
        return True

    def _insert_isolating(self, batch: Batch, budget: list[int]) -> None:
        start = time.perf_counter()
        try:
            if batch.arrow is not None:
                self._target.insert_arrow(batch.table, batch.arrow, dedup_token=batch.token)
            else:
                self._target.insert_rows(
                    batch.table, batch.columns, batch.rows, dedup_token=batch.token
                )
        except Exception as exc:
            if self._is_retryable(exc):
                raise _Retry(exc) from exc
            self._m.errors.labels("rejected").inc()
            budget[0] -= 1
            if batch.size == 1 or budget[0] <= 0:
                log.error(
                    "writer: %s rejected %d rows (dead-lettered): %s",
                    batch.table, batch.size, exc,
                )  # fmt: skip
                self._count_drop("rejected", batch.size)
                return
            mid = batch.size // 2
            for i, (a, b) in enumerate(((0, mid), (mid, batch.size))):
                self._insert_isolating(batch.slice(a, b, f"{batch.token}.{i}"), budget)
            return
        self._m.latency.labels(batch.table).observe(time.perf_counter() - start)
        self._m.inserted.labels(batch.table).inc(batch.size)
        with self._lock:
            self._inserted_rows += batch.size

    def _drain_on_stop(self) -> None:
        self._form_batches(force=True)
        while self._clock.monotonic() < self._stop_deadline:
            if not self._deliver_one():
                break
        self._spool_pending()
        with self._lock:
            self._busy = False

    # -- spool ----------------------------------------------------------------------
    def _open_spool(self) -> Spool:
        if self._spool_dir is None:
            return MemorySpool(max_bytes=self._spool_max, on_drop=self._on_spool_drop)
        return DiskSpool(
            self._spool_dir,
            max_bytes=self._spool_max,
            on_drop=self._on_spool_drop,
            on_corrupt=lambda n: self._m.corrupt.inc(n),
        )

    def _spool_has_data(self) -> bool:
        return self._spool is not None and self._spool.batches > 0

    def _spool_append(self, batch: Batch) -> None:
        assert self._spool is not None
        try:
            self._spool.append(batch)
        except SpoolError as exc:
            # Disk full or unwritable: the batch stays in memory (bounded like the queue)
            # and is retried later.
            log.error("writer: %s; keeping the batch in memory", exc)
            self._pending.append(batch)
            while len(self._pending) > 1 and (sum(b.size for b in self._pending) > self._queue_max):
                self._count_drop("spool_error", self._pending.popleft().size)
        self._sync_spool_gauges()

    def _spool_pending(self) -> None:
        while self._pending:
            batch = self._pending.popleft()
            if self._spool is None:
                self._count_drop("stopped", batch.size)
                continue
            try:
                self._spool.append(batch)
            except SpoolError as exc:
                log.error("writer: %s; %d rows lost", exc, batch.size)
                self._count_drop("spool_error", batch.size)
        self._sync_spool_gauges()

    def _on_spool_drop(self, batches: int, rows: int) -> None:
        self._count_drop("spool_full", rows)

    def _sync_spool_gauges(self) -> None:
        if self._spool is not None:
            self._m.spool_bytes.set(self._spool.bytes)
            self._m.spool_batches.set(self._spool.batches)

    # -- bookkeeping ----------------------------------------------------------------
    def _count_drop(self, reason: str, n: int) -> None:
        self._m.dropped.labels(reason).inc(n)
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def _is_idle(self) -> bool:
        # Caller holds self._lock.
        return (
            not self._queue
            and not self._busy
            and not self._pending
            and not (self._spool is not None and self._spool.batches)
        )

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()


class _Retry(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
