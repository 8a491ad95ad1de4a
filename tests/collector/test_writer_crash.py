"""A writer process killed with SIGKILL while spooling loses nothing it had spooled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry

from collector.writer import Writer

CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime, timedelta
    from collector.records import RequestRecord
    from collector.writer import Writer

    class Down:
        def insert_rows(self, table, columns, rows, *, dedup_token=None):
            raise ConnectionError("store down")

    t0 = datetime(2026, 11, 22, tzinfo=UTC)
    w = Writer(Down(), batch_size=50, flush_interval_s=0.01, spool_dir=sys.argv[1],
               backoff_initial_s=0.01, backoff_max_s=0.05, idle_wait_s=0.005)
    w.start()
    i = 0
    def emit(n):
        global i
        w.emit([RequestRecord(ts=t0 + timedelta(microseconds=k), pool="p", span_id=f"{k:016x}")
                for k in range(i, i + n)])
        i += n
    emit(500)
    while w.stats().spool_batches < 10:
        time.sleep(0.005)
    print("ready", flush=True)
    while True:  # keep spooling until killed, so the kill can land mid-append
        emit(50)
        time.sleep(0.001)
    """
)


def test_sigkill_while_spooling_keeps_every_batch_spooled_before_it(store, tmp_path: Path):
    spool = tmp_path / "spool"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool)], stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    w = Writer(store, spool_dir=spool, registry=CollectorRegistry(), idle_wait_s=0.02)
    w.start()
    try:
        assert w.flush(60)
    finally:
        w.stop(10)
    total, distinct, low = store.query(
        "SELECT count(), uniqExact(span_id), min(span_id) FROM requests"
    ).rows[0]
    assert total == distinct, "a replayed batch was inserted twice"
    assert total >= 500, "batches spooled before 'ready' were lost"
    # Everything spooled is a prefix-complete run: batches are spooled in order.
    max_id = store.query("SELECT max(reinterpretAsUInt64(reverse(span_id))) FROM requests")
    assert int(max_id.rows[0][0]) + 1 == total
    assert bytes(low) == bytes(8)
    assert list(spool.glob("*.seg")) == []
