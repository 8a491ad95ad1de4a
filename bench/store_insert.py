"""Store insert benchmark: ready Arrow batches of ``requests`` into chDB, on one core.

    python -m bench.store_insert [--rows 200000]

What the OTLP receiver's store side costs once decode has produced an Arrow table:
``ChdbStore.insert_arrow`` of pre-built batches (realistic rows: 8 pools, 50 Zipf
tenants, LowCardinality strings, Nullable UInt32 latencies, FixedString ids, Decimal64
cost, a two-entry attributes Map; timestamps within the last two minutes, as real-time
ingest sends them), every rollup kept up to date. Each variant runs in its own process
and fresh data directory, pinned to CPU 0 before chDB starts, so the engine's background
merges share that core as they would on a one-core budget. Side by side in one run:

- views: m0004's set (two views over raw rows) vs m0005's (one, hourly chained);
- transport: ``INSERT ... SELECT * FROM Python(table)`` (the driver before m0005) vs an
  Arrow IPC stream through chDB's ``send_insert`` (the driver now);
- batch sizes 5k to 100k rows (per-insert fixed costs vs per-row costs);
- floors: ``requests`` without any view, and m0005 with background merges stopped;
- merge experiments (not in the schema): a wider merge fan-in on the five tables;
- the existing ``insert_rows`` figures (``bench.store``'s insert sections, Python rows).

Reported per variant: rows/s (wall, inserts only), CPU us/row of the inserts (process
CPU time, all engine threads, so merges that ran meanwhile too) and including the merges
still running after the last insert (until none has run for a second), load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

POOLS = ["chat-8b", "chat-70b", "code-70b", "embed-small", "rag-8b", "batch-70b", "agent-8b",
         "vision-11b"]  # fmt: skip

# name -> (schema version, transport, batch rows, extra)
VARIANTS: dict[str, tuple[int, str, int, str]] = {
    "m0004_python_10k (before)": (4, "python", 10_000, ""),
    "m0004_stream_10k": (4, "stream", 10_000, ""),
    "m0004_stream_50k": (4, "stream", 50_000, ""),
    "m0005_python_10k": (5, "python", 10_000, ""),
    "m0005_stream_5k": (5, "stream", 5_000, ""),
    "m0005_stream_10k (after)": (5, "stream", 10_000, ""),
    "m0005_stream_20k": (5, "stream", 20_000, ""),
    "m0005_stream_50k": (5, "stream", 50_000, ""),
    "m0005_stream_100k": (5, "stream", 100_000, ""),
    "m0005_stream_10k_merges_stopped": (5, "stream", 10_000, "stop_merges"),
    "m0005_stream_10k_merge_base_20": (5, "stream", 10_000, "merge:merge_selector_base = 20"),
    "m0005_stream_10k_min_merge_10": (5, "stream", 10_000, "merge:min_parts_to_merge_at_once = 10"),
    "no_views_python_10k": (5, "python", 10_000, "no_views"),
    "no_views_stream_10k (floor)": (5, "stream", 10_000, "no_views"),
    "no_views_stream_50k": (5, "stream", 50_000, "no_views"),
}


def arrow_batch(n: int, seed: int, end: float, span_s: float = 60.0) -> pa.Table:
    """``n`` requests with timestamps in ``[end - span_s, end)``, typed as the table."""
    rng = np.random.default_rng(seed)
    ts = np.sort(end - rng.random(n) * span_s)
    pi = rng.integers(0, len(POOLS), n)

    def pick(values: list[str], idx: Any) -> pa.Array:
        return pa.array(np.array(values, dtype=object)[idx], pa.string())

    err = rng.random(n) < 0.005
    ttft = np.minimum(rng.lognormal(np.log(180_000), 0.7, n), 6e8).astype("uint32")
    tpot = np.minimum(rng.lognormal(np.log(22_000), 0.35, n), 1e7).astype("uint32")
    out = np.clip(rng.lognormal(np.log(180), 0.9, n), 1, 8192).astype("uint32")
    e2e = np.minimum(ttft + tpot.astype("uint64") * (out - 1), 4e9).astype("uint32")
    queue = np.minimum(rng.exponential(15_000, n), ttft).astype("uint32")
    decode = e2e - ttft
    inp = np.clip(rng.lognormal(np.log(900), 1.0, n), 1, 128_000).astype("uint32")
    tps = (out / np.maximum(decode, 1) * 1e6).astype("float32")
    missing = rng.random(n) < 0.01  # spans without latency attributes

    def lat(a: Any) -> pa.Array:
        return pa.array(a, pa.uint32(), mask=missing)

    offsets = pa.array(np.arange(0, 2 * n + 1, 2, dtype="int32"))
    attributes = pa.MapArray.from_arrays(
        offsets,
        pa.array(["gen_ai.system", "http.route"] * n, pa.string()),
        pa.array(["vllm", "/v1/chat/completions"] * n, pa.string()),
    )
    return pa.table({
        "ts": pa.array((ts * 1e6).astype("int64")).cast(pa.timestamp("us", tz="UTC")),
        "pool": pick(POOLS, pi),
        "model": pick([f"model-{p}" for p in POOLS], pi),
        "replica": pick([f"{p}-{k}" for p in POOLS for k in range(8)],
                        pi * 8 + rng.integers(0, 8, n)),
        "tenant": pick([f"tenant-{k}" for k in range(50)], (rng.random(n) ** 3 * 50).astype(int)),
        "priority": pick(["interactive", "batch"], (rng.random(n) < 0.3).astype(int)),
        "status": pick(["ok", "error"], err.astype(int)),
        "error_type": pick(["", "timeout"], err.astype(int)),
        "finish_reason": pick(["stop", "abort"], err.astype(int)),
        "trace_id": _random_ids(rng, n, 16),
        "span_id": _random_ids(rng, n, 8),
        "ttft_us": lat(ttft), "tpot_us": lat(tpot), "e2e_us": lat(e2e), "queue_us": lat(queue),
        "prefill_us": lat(ttft - queue), "decode_us": lat(decode),
        "input_tokens": pa.array(inp, pa.uint32()),
        "output_tokens": pa.array(out, pa.uint32()),
        "cached_tokens": pa.array(np.where(rng.random(n) < 0.3, inp * 6 // 10, 0), pa.uint32()),
        "output_tokens_per_s": pa.array(tps, pa.float32(), mask=decode == 0),
        "cost_usd": pa.array(np.round((inp * 0.05 + out * 0.2) / 1e6, 9)).cast(
            pa.decimal128(18, 9)),
        "attributes": attributes,
    })  # fmt: skip


def _random_ids(rng: Any, n: int, width: int) -> pa.Array:
    buf = pa.py_buffer(rng.bytes(width * n))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buf])


def _migrate_to(store: Any, version: int) -> None:
    from controlplane.store.migrate import _ensure_table, known_migrations

    _ensure_table(store)
    for mig in known_migrations():
        if mig.version <= version:
            for stmt in mig.statements:
                store.command(stmt)


def _settle_merges(store: Any, limit_s: float = 120.0) -> bool:
    """Wait until no merge has run for a second: the merges the timed inserts caused."""
    deadline, quiet = time.monotonic() + limit_s, 0
    while time.monotonic() < deadline:
        busy = store.query("SELECT count() FROM system.merges").rows[0][0]
        quiet = 0 if busy else quiet + 1
        if quiet >= 5:
            return True
        time.sleep(0.2)
    return False


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_variant(name: str, rows: int) -> dict[str, Any]:
    os.sched_setaffinity(0, {0})  # before chDB starts: its threads inherit the mask
    from controlplane.store.chdb_driver import ChdbStore

    version, transport, batch, extra = VARIANTS[name]
    nb = max(8, rows // batch)  # at least 8 timed inserts
    now = time.time()
    # Pre-built batches sliding through the last two minutes, as a real-time stream.
    batches = [arrow_batch(batch, i, now - 60 + 60 * i / nb) for i in range(nb + 1)]
    d = tempfile.mkdtemp(prefix="governor-insert-")
    try:
        store = ChdbStore(d, database="bench")
        _migrate_to(store, version)
        if extra == "no_views":
            for view in ["requests_1m_mv", "requests_1h_mv"]:
                store.command(f"DROP VIEW IF EXISTS {view}")
        if extra.startswith("merge:"):  # experiment: a MergeTree setting on every table fed
            for t in ["requests", "requests_1m", "requests_1h", "requests_1m_pool",
                      "requests_1h_pool"]:  # fmt: skip
                store.command(f"ALTER TABLE {t} MODIFY SETTING {extra[len('merge:') :]}")
        if extra == "stop_merges":
            store.command("SYSTEM STOP MERGES")
        cols = ", ".join(batches[0].column_names)

        def insert(data: pa.Table) -> None:
            if transport == "stream":
                store.insert_arrow("requests", data)
            else:  # the driver's transport before m0005: chDB reads the named variable
                arrow_data = data  # noqa: F841
                store.command(f"INSERT INTO requests ({cols}) SELECT * FROM Python(arrow_data)")

        insert(batches[0])  # warm-up: type cache, first parts
        load0, cpu0, t0 = _load(), time.process_time(), time.perf_counter()
        for data in batches[1:]:
            insert(data)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        settled = _settle_merges(store)
        cpu_all = time.process_time() - cpu0
        n = nb * batch
        got = store.query(
            "SELECT (SELECT count() FROM requests), (SELECT sum(requests) FROM requests_1m), "
            "(SELECT sum(requests) FROM requests_1h), (SELECT sum(requests) FROM requests_1h_pool)"
        ).rows[0]
        # Every row inserted (warm-up included) is in the raw table and, through the
        # views, in each rollup: an insert dropped (dedup) or a view skipped would make
        # the rate count work that was not done.
        total = (nb + 1) * batch
        want = [total] + [0 if extra == "no_views" else total] * 3
        assert [int(x or 0) for x in got] == want, (got, want)
        parts = store.query(
            "SELECT table, count() FROM system.parts WHERE database = 'bench' AND active "
            "AND table LIKE 'requests%' GROUP BY table ORDER BY table"
        ).rows
        store.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {
        "variant": name, "schema": f"m{version:04d}", "transport": transport, "batch": batch,
        "rows": n, "rows_per_s": round(n / wall), "cpu_us_per_row": round(cpu / n * 1e6, 2),
        "cpu_us_per_row_incl_merges": round(cpu_all / n * 1e6, 2),
        "rows_per_cpu_s_incl_merges": round(n / cpu_all), "merges_settled": settled,
        "wall_us_per_row": round(wall / n * 1e6, 2), "load_before": load0,
        "load_after": _load(), "rows_in_tables": [int(x or 0) for x in got],
        "active_parts_after": {t: int(c) for t, c in parts},
    }  # fmt: skip


def _subprocess(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{args} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=400_000, help="rows per variant")
    ap.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--only", action="append", help="run only these variants")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.rows)))
        return
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, variants pinned to CPU 0",
        "when": datetime.now(UTC).isoformat(),
        "load_start": _load(),
        "insert_arrow": [
            _subprocess(["bench.store_insert", "--variant", v, "--rows", str(args.rows)])
            for v in (args.only or VARIANTS)
        ],
    }
    before = next((r for r in report["insert_arrow"] if "(before)" in r["variant"]), None)
    after = next((r for r in report["insert_arrow"] if "(after)" in r["variant"]), None)
    if before and after:
        report["speedup_after_over_before"] = round(after["rows_per_s"] / before["rows_per_s"], 2)
    if not args.only:
        report["insert_rows"] = [
            _subprocess(["bench.store", "--section", s, "--arg", "200000"])
            for s in ("insert_chdb", "insert_clickhouse")
        ]
    report["load_end"] = _load()
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
