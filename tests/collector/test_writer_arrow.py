"""The writer's Arrow path (``emit_arrow``), as the OTLP receiver uses it, on the real store.

Same guarantees as for records: batching by size and time, disk spool on outage replayed
in order without duplicates (also across a restart), bounded queue, drop-oldest when the
spool is full, rows the store rejects isolated.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from collector.columnar import records_table
from collector.records import RequestRecord
from collector.spool import Batch, DiskSpool, MemorySpool, decode, encode
from collector.writer import Writer
from controlplane.errors import QueryError, StoreUnavailable
from tests.support.writer import counts, retryable

T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


def table(ids: range) -> pa.Table:
    return records_table(
        [
            RequestRecord(ts=T0 + timedelta(milliseconds=i), pool="chat", model="m",
                          span_id=f"{i:016x}", trace_id=f"{i:032x}", ttft_us=1000 + i,
                          input_tokens=10, output_tokens=20, cost_usd=0.25,
                          attributes={"span.kind": "server"})
            for i in ids
        ]
    )  # fmt: skip


class ArrowTarget:
    """The real store behind a switch, recording what it accepted and in which order."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.down = False
        self.lose_acks = 0
        self.reject_span: int | None = None  # a row the store refuses (bad data)
        self.order: list[int] = []
        self.tokens: list[str | None] = []
        self.attempts = 0

    def insert_rows(self, *a: Any, **kw: Any) -> None:
        raise AssertionError("Arrow batches must be inserted as Arrow")

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        self.attempts += 1
        if self.down:
            raise StoreUnavailable("injected outage")
        ids = [int.from_bytes(b, "big") for b in data["span_id"].to_pylist()]
        if self.reject_span in ids:
            raise QueryError("injected: a value the column cannot take")
        self.store.insert_arrow(table, data, dedup_token=dedup_token)
        if self.lose_acks:
            self.lose_acks -= 1
            raise StoreUnavailable("injected: connection reset after the insert")
        self.order.extend(ids)
        self.tokens.append(dedup_token)


def test_arrow_chunks_are_concatenated_into_batches_of_the_configured_size(store, make_writer):
    target = ArrowTarget(store)
    w = make_writer(target, batch_size=100)
    for k in range(5):  # chunks of 60: batches cut through them
        w.emit_arrow("requests", table(range(k * 60, (k + 1) * 60)))
    assert w.flush(60)
    assert counts(store) == (300, 300)
    assert target.order == list(range(300))
    assert len(target.tokens) == 3 and len(set(target.tokens)) == 3
    assert w.stats().inserted_rows == 300


def test_a_partial_arrow_batch_goes_in_when_the_flush_interval_passes(store, make_writer, clock):
    target = ArrowTarget(store)
    w = make_writer(target, batch_size=1000, flush_interval_s=1.0)
    w.emit_arrow("requests", table(range(3)))
    clock.advance(0.5)
    time.sleep(0.2)  # the worker polls every 20 ms: it would have inserted by now
    assert target.order == []
    clock.advance(0.5)
    deadline = time.monotonic() + 10
    while not target.order and time.monotonic() < deadline:
        time.sleep(0.01)
    assert target.order == [0, 1, 2]


def test_an_outage_spools_arrow_batches_to_disk_and_replays_them_in_order_once(
    store, make_writer, clock, tmp_path: Path
):
    target = ArrowTarget(store)
    target.down = True
    w = make_writer(target, batch_size=50, spool_dir=tmp_path / "spool", backoff_initial_s=1.0)
    for k in range(6):
        w.emit_arrow("requests", table(range(k * 50, (k + 1) * 50)))
        w.flush(0.05)
    s = w.stats()
    assert s.outage and s.spool_batches == 6 and s.spool_bytes > 0
    target.down = False
    target.lose_acks = 1  # the first replayed insert lands but reports a failure
    for k in range(6, 8):  # more arrive while the spool is replayed
        w.emit_arrow("requests", table(range(k * 50, (k + 1) * 50)))
    for _ in range(100):
        if w.flush(0.2):
            break
        clock.advance(10)
    assert w.flush(60)
    assert counts(store) == (400, 400)
    assert sorted(set(target.order)) == list(range(400))
    assert target.order == sorted(target.order)
    assert store.query("SELECT sum(requests) FROM requests_1m").rows[0][0] == 400
    assert w.stats().dropped == {}


def test_arrow_batches_spooled_by_a_stopped_writer_are_replayed_by_the_next(
    store, tmp_path: Path, clock
):
    spool = tmp_path / "spool"
    dead = ArrowTarget(store)
    dead.down = True
    w1 = Writer(dead, batch_size=100, spool_dir=spool, clock=clock, is_retryable=retryable,
                flush_interval_s=3600, idle_wait_s=0.02)  # fmt: skip
    w1.start()
    w1.emit_arrow("requests", table(range(250)))
    w1.stop(timeout=2)
    assert w1.stats().spool_batches == 3 and w1.stats().dropped == {}
    w2 = Writer(ArrowTarget(store), spool_dir=spool, clock=clock, is_retryable=retryable,
                idle_wait_s=0.02)  # fmt: skip
    w2.start()
    try:
        assert w2.flush(60)
    finally:
        w2.stop(5)
    assert counts(store) == (250, 250)
    got = store.query("SELECT sum(cost_usd), sum(ttft_us) FROM requests").rows[0]
    assert float(got[0]) == pytest.approx(250 * 0.25)
    assert int(got[1]) == sum(1000 + i for i in range(250))


def test_a_full_queue_keeps_the_head_of_an_arrow_chunk_and_counts_the_rest(store, make_writer):
    target = ArrowTarget(store)
    target.down = True  # nothing drains
    w = make_writer(target, batch_size=1000, queue_max=120)
    w.emit_arrow("requests", table(range(100)))
    w.emit_arrow("requests", table(range(100, 200)))
    assert w.stats().queued == 120
    assert w.stats().dropped == {"queue_full": 80}


def test_rows_the_store_rejects_are_isolated_and_the_rest_of_the_batch_goes_in(store, make_writer):
    target = ArrowTarget(store)
    target.reject_span = 37
    w = make_writer(target, batch_size=100)
    w.emit_arrow("requests", table(range(100)))
    assert w.flush(60)
    assert counts(store) == (99, 99)
    assert w.stats().dropped == {"rejected": 1}


def test_arrow_spool_records_round_trip_and_merge(tmp_path: Path):
    a = Batch("requests", tuple(table(range(1)).column_names), [], "tok-a", arrow=table(range(5)))
    b = Batch("requests", a.columns, [], "tok-b", arrow=table(range(5, 9)))
    back = decode(encode(a)[16:])
    assert back.token == "tok-a" and back.size == 5 and back.arrow is not None
    assert back.arrow.equals(a.arrow)
    spool = DiskSpool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(a)
    spool.append(b)
    merged = spool.peek(100)
    assert merged is not None and merged.size == 9 and merged.token.startswith("m")
    assert merged.arrow is not None and merged.arrow.equals(pa.concat_tables([a.arrow, b.arrow]))


def test_a_full_spool_drops_the_oldest_arrow_batches():
    dropped: list[tuple[int, int]] = []
    one = Batch("requests", (), [], "t0", arrow=table(range(200)))
    size = len(encode(one))
    spool = MemorySpool(max_bytes=int(size * 2.5), on_drop=lambda b, r: dropped.append((b, r)))
    for k in range(4):
        spool.append(Batch("requests", (), [], f"t{k}", arrow=table(range(k * 200, k * 200 + 200))))
    assert spool.batches == 2 and sum(r for _, r in dropped) == 400
    head = spool.peek()
    assert head is not None and head.token == "t2"
