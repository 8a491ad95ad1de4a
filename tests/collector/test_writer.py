"""The writer against the real embedded store, with outages injected by a wrapper target."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collector.records import GpuSample, RequestRecord
from collector.writer import Writer
from controlplane.errors import StoreUnavailable
from tests.support.writer import counts, retryable

T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


def rec(i: int, *, trace: str | None = None) -> RequestRecord:
    return RequestRecord(
        ts=T0 + timedelta(milliseconds=i),
        pool="chat",
        model="m",
        span_id=f"{i:016x}",
        trace_id=trace if trace is not None else f"{i:032x}",
        ttft_us=1000 + i,
        input_tokens=10,
        output_tokens=20,
    )


class FlakyTarget:
    """The real store behind a switch: down raises a retryable error like an outage does."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.down = False
        self.lose_acks = 0  # inserts that reach the store but whose success is not reported
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.inserted = threading.Event()
        self.accepted: list[tuple[str, int, str | None]] = []  # table, first span id, token
        self.order: list[int] = []  # span ids in the order the store accepted them
        self.sizes: list[tuple[str, int]] = []  # (table, rows) of each accepted insert
        self.attempts = 0

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> None:
        self.attempts += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.down:
            raise StoreUnavailable("injected outage")
        self.store.insert_rows(table, columns, rows, dedup_token=dedup_token)
        if self.lose_acks:
            self.lose_acks -= 1
            raise StoreUnavailable("injected: connection reset after the insert")
        ids = (
            [int(r[list(columns).index("span_id")], 16) for r in rows]
            if ("span_id" in columns)
            else [-1]
        )
        self.order.extend(ids)
        self.accepted.append((table, ids[0], dedup_token))
        self.sizes.append((table, len(rows)))
        self.inserted.set()


def test_full_batches_are_inserted_one_per_table_each_with_its_own_token(store, make_writer):
    target = FlakyTarget(store)
    w = make_writer(target, batch_size=100)
    w.emit([rec(i) for i in range(250)])
    w.emit([GpuSample(ts=T0, node="n1", gpu=0, utilization=0.5)])
    assert w.flush(60)
    assert counts(store) == (250, 250)
    assert store.query("SELECT count() FROM gpu_samples").rows[0][0] == 1
    assert [n for t, n in target.sizes if t == "requests"] == [100, 100, 50]
    assert [n for t, n in target.sizes if t == "gpu_samples"] == [1]
    tokens = [tok for _, _, tok in target.accepted]
    assert len(set(tokens)) == len(tokens) == 4


def test_a_backlog_is_inserted_in_larger_batches_when_configured(store, make_writer):
    target = FlakyTarget(store)
    w = make_writer(target, batch_size=100, backlog_max_rows=300)
    w.emit([rec(i) for i in range(1000)])  # ten batches' worth waiting at once
    assert w.flush(60)
    assert counts(store) == (1000, 1000)
    assert target.order == list(range(1000))
    # batches of up to 300 while two or more batches wait, then the usual size
    assert [n for _, n in target.sizes] == [300, 300, 300, 100]


def test_a_partial_batch_is_inserted_when_the_flush_interval_passes(store, make_writer, clock):
    target = FlakyTarget(store)
    w = make_writer(target, batch_size=1000, flush_interval_s=1.0)
    w.emit([rec(i) for i in range(3)])
    clock.advance(0.5)
    assert not target.inserted.wait(0.2), "inserted before the interval passed"
    clock.advance(0.5)
    assert target.inserted.wait(5)
    assert counts(store) == (3, 3)


def test_an_outage_loses_nothing_and_duplicates_nothing(store, make_writer, clock, registry):
    target = FlakyTarget(store)
    target.down = True
    w = make_writer(target, batch_size=100, backoff_initial_s=1.0, backoff_max_s=4.0)
    for k in range(10):
        w.emit([rec(i) for i in range(k * 100, (k + 1) * 100)])
    assert not w.flush(0.3)
    s = w.stats()
    assert s.outage and s.spool_batches == 10 and s.spool_bytes > 0
    assert registry.get_sample_value("governor_writer_spool_batches") == 10
    assert counts(store) == (0, 0)
    target.down = False
    clock.advance(60)
    assert w.flush(60)
    assert counts(store) == (1000, 1000)
    assert registry.get_sample_value("governor_writer_replayed_batches_total") == 10
    assert registry.get_sample_value("governor_writer_spool_bytes") == 0
    assert w.stats().dropped == {}


def test_a_batch_whose_success_was_not_reported_is_not_inserted_twice(store, make_writer, clock):
    target = FlakyTarget(store)
    target.lose_acks = 3
    w = make_writer(target, batch_size=100, backoff_initial_s=1.0)
    w.emit([rec(i) for i in range(300)])
    for _ in range(100):  # each retry waits for its backoff on the manual clock
        if w.flush(0.2):
            break
        clock.advance(10)
    assert w.flush(60)
    # 1st batch: lost ack, then replayed alone (lost again, then ok) under its own token;
    # the two never-sent batches are replayed merged (lost once, then ok) under one token.
    assert target.attempts == 5
    tokens = [tok for _, _, tok in target.accepted]
    assert len(tokens) == 2 and not tokens[0].startswith("m") and tokens[1].startswith("m")
    assert counts(store) == (300, 300)
    # The per-minute rollup is fed by a materialized view; it must not double count either.
    assert store.query("SELECT sum(requests) FROM requests_1m").rows[0][0] == 300


def test_spooled_batches_are_replayed_in_the_order_they_were_formed(store, make_writer, clock):
    target = FlakyTarget(store)
    target.down = True
    w = make_writer(target, batch_size=10, backoff_initial_s=1.0)
    for k in range(10):
        w.emit([rec(i) for i in range(k * 10, (k + 1) * 10)])
        w.flush(0.05)
    target.down = False
    clock.advance(5)
    for k in range(10, 13):  # arrive while the spool is still being replayed
        w.emit([rec(i) for i in range(k * 10, (k + 1) * 10)])
    assert w.flush(60)
    assert target.order == list(range(130))
    assert counts(store) == (130, 130)


def test_stop_with_a_dead_store_spools_everything_and_a_new_writer_replays_it(
    store, tmp_path: Path, clock, registry
):
    spool = tmp_path / "spool"
    dead = FlakyTarget(store)
    dead.down = True
    w1 = Writer(dead, batch_size=100, spool_dir=spool, clock=clock, registry=registry,
                is_retryable=retryable, flush_interval_s=3600, idle_wait_s=0.02)  # fmt: skip
    w1.start()
    w1.emit([rec(i) for i in range(550)])
    w1.stop(timeout=2)
    assert w1.stats().dropped == {}
    assert w1.stats().spool_batches == 6
    assert list(spool.glob("*.seg"))
    w1.emit([rec(9999)])
    assert w1.stats().dropped == {"stopped": 1}

    w2 = Writer(FlakyTarget(store), spool_dir=spool, clock=clock, registry=CollectorRegistry(),
                is_retryable=retryable, idle_wait_s=0.02)  # fmt: skip
    w2.start()
    try:
        assert w2.flush(60)
    finally:
        w2.stop(5)
    assert counts(store) == (550, 550)
    assert list(spool.glob("*.seg")) == []


def test_a_torn_spool_tail_costs_only_the_torn_batch(
    store, tmp_path: Path, clock, caplog: pytest.LogCaptureFixture
):
    spool = tmp_path / "spool"
    dead = FlakyTarget(store)
    dead.down = True
    w1 = Writer(dead, batch_size=100, spool_dir=spool, clock=clock, is_retryable=retryable,
                flush_interval_s=3600, idle_wait_s=0.02)  # fmt: skip
    w1.start()
    w1.emit([rec(i) for i in range(300)])
    w1.stop(timeout=2)
    (seg,) = spool.glob("*.seg")
    seg.write_bytes(seg.read_bytes()[:-3])
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING):
        w2 = Writer(FlakyTarget(store), spool_dir=spool, clock=clock, registry=registry,
                    is_retryable=retryable, idle_wait_s=0.02)  # fmt: skip
        w2.start()
        try:
            assert w2.flush(60)
        finally:
            w2.stop(5)
    assert counts(store) == (200, 200)
    assert registry.get_sample_value("governor_writer_spool_corrupt_records_total") == 1
    assert "torn or corrupt" in caplog.text


def test_when_the_spool_is_full_the_oldest_rows_are_dropped_and_counted(
    store, tmp_path: Path, make_writer, clock, registry, caplog: pytest.LogCaptureFixture
):
    target = FlakyTarget(store)
    target.down = True
    w = make_writer(target, batch_size=20, spool_dir=tmp_path / "s", spool_max_bytes=8192,
                    backoff_initial_s=1.0)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="collector.spool"):
        for k in range(40):
            w.emit([rec(i) for i in range(k * 20, (k + 1) * 20)])
            w.flush(0.02)
    dropped = w.stats().dropped.get("spool_full", 0)
    assert 0 < dropped < 800
    assert w.stats().spool_bytes <= 8192
    assert "dropped the oldest" in caplog.text
    target.down = False
    clock.advance(10)
    assert w.flush(60)
    kept = store.query("SELECT min(span_id), max(span_id), count() FROM requests").rows[0]
    # What survived is exactly the newest rows: a contiguous run ending at the last one.
    assert int(kept[2]) + dropped == 800
    assert int(bytes(kept[0]).hex(), 16) == dropped and int(bytes(kept[1]).hex(), 16) == 799
    assert (
        registry.get_sample_value("governor_writer_dropped_records_total", {"reason": "spool_full"})
        == dropped
    )


def test_rows_the_store_rejects_are_dead_lettered_and_the_rest_of_the_batch_goes_in(
    store, make_writer, registry, caplog: pytest.LogCaptureFixture
):
    target = FlakyTarget(store)
    w = make_writer(target, batch_size=100)
    rows = [rec(i, trace="not-hex" if i in (17, 62) else None) for i in range(100)]
    with caplog.at_level(logging.ERROR, logger="collector.writer"):
        w.emit(rows)
        assert w.flush(60)
    assert counts(store) == (98, 98)
    assert w.stats().dropped == {"rejected": 2}
    assert "dead-lettered" in caplog.text and "trace_id" in caplog.text
    w.emit([rec(i) for i in range(100, 110)])  # the pipeline keeps flowing
    assert w.flush(60)
    assert counts(store) == (108, 108)


def test_emit_never_blocks_and_counts_drops_when_the_queue_is_full(
    store, make_writer, registry, caplog: pytest.LogCaptureFixture
):
    target = FlakyTarget(store)
    target.gate = threading.Event()
    w = make_writer(target, batch_size=10, queue_max=50)
    w.emit([rec(i) for i in range(10)])
    assert target.entered.wait(5)  # the worker holds that batch, stuck in the store
    assert w.room() == 50  # the batch in the worker's hands left the queue
    w.emit([rec(i) for i in range(10, 30)])
    assert w.room() == 30
    w.emit([rec(i) for i in range(30, 110)])  # returns although nothing can drain
    assert w.room() == 0
    assert w.stats().dropped == {"queue_full": 50}
    assert (
        registry.get_sample_value("governor_writer_dropped_records_total", {"reason": "queue_full"})
        == 50
    )
    assert registry.get_sample_value("governor_writer_queued_records") == 50
    with caplog.at_level(logging.WARNING, logger="collector.writer"):
        target.gate.set()
        assert w.flush(60)
    assert "dropped records since last report: {'queue_full': 50}" in caplog.text
    assert w.flush(60)
    assert counts(store) == (60, 60)


def test_emit_never_raises_on_things_that_are_not_records(store, make_writer):
    w = make_writer(FlakyTarget(store), batch_size=10)
    w.emit([object(), rec(1), "text"])  # type: ignore[list-item]
    assert w.flush(60)
    assert counts(store) == (1, 1)
    assert w.stats().dropped == {"rejected": 2}


def test_without_a_spool_directory_an_outage_is_held_in_memory(store, make_writer, clock):
    target = FlakyTarget(store)
    target.down = True
    w = make_writer(target, batch_size=100, backoff_initial_s=1.0)
    w.emit([rec(i) for i in range(400)])
    assert not w.flush(0.2)
    target.down = False
    clock.advance(5)
    assert w.flush(60)
    assert counts(store) == (400, 400)


def test_metrics_are_exported_in_prometheus_text(store, make_writer, registry):
    w = make_writer(FlakyTarget(store), batch_size=10)
    w.emit([rec(i) for i in range(10)])
    assert w.flush(60)
    text = generate_latest(registry).decode()
    for name in (
        "governor_writer_queued_records",
        'governor_writer_inserted_rows_total{table="requests"} 10.0',
        'governor_writer_insert_duration_seconds_count{table="requests"} 1.0',
        "governor_writer_spool_bytes",
        "governor_writer_spool_batches",
        "governor_writer_replayed_batches_total",
    ):
        assert name in text


@pytest.mark.parametrize(
    "kw",
    [{"batch_size": 0}, {"queue_max": 0}, {"flush_interval_s": 0}],
    ids=["zero batch size", "zero queue", "zero interval"],
)
def test_bad_settings_are_refused_with_the_setting_named(kw):
    from collector.errors import WriterError

    with pytest.raises(WriterError, match=next(iter(kw)).split("_")[0]):
        Writer(FlakyTarget(None), **kw)
