"""Store benchmark: insert rate per driver, bytes per row, rollup vs raw SLI reads.

    python -m bench.store [--insert-rows 200000] [--bytes-rows 10000000] [--sli-rows 100000000]

Sections run in their own processes (chDB binds one data directory per process):
1. insert: the same RequestRecord batches (10,000 rows) through ``ChdbStore`` and through
   ``ClickHouseStore`` talking HTTP to a chDB-backed ClickHouse front (test harness) —
   rows/s, side by side. Each insert also feeds both rollup views.
2. bytes: bytes on disk per ``requests`` row at 10M generated rows after
   ``OPTIMIZE FINAL``, with the default ``store.trace_ids`` (exemplars) and with ``all``,
   total and per column.
3. sli: a 28-day good/total TTFT SLI (threshold 250 ms) for one pool at >= 100M rows:
   a raw scan of ``requests``, the previous rollup read (no
   cache), reads through ``RollupCache`` with an empty cache (cold), with the same window
   held (cached) and with the window one minute later each read (sliding); 9 rounds
   after a warm-up, each round running every read once; medians, and every answer (exact
   agreement expected: 250 ms is a bucket bound).
Data sets live under ``bench/data/`` (git-ignored) and are reused when present.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from collector.records import RequestRecord, as_row, columns

DATA = Path(__file__).resolve().parent / "data"


def _records(n: int, seed: int = 1) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        ttft = int(rng.lognormvariate(math.log(180_000), 0.7))
        tpot = int(rng.lognormvariate(math.log(22_000), 0.35))
        out_tok = max(1, int(rng.lognormvariate(math.log(180), 0.9)))
        rec = RequestRecord(
            ts=now - timedelta(seconds=(n - i) * 0.01), pool=f"pool-{i % 4}", model="llama",
            replica=f"r{i % 16}", tenant=f"t{int(rng.random() ** 3 * 50)}", priority="interactive",
            status="error" if rng.random() < 0.005 else "ok", finish_reason="stop",
            trace_id=f"{rng.getrandbits(128):032x}", span_id=f"{rng.getrandbits(64):016x}",
            ttft_us=ttft, tpot_us=tpot, e2e_us=ttft + tpot * (out_tok - 1), queue_us=1000,
            prefill_us=ttft - 1000, decode_us=tpot * (out_tok - 1),
            input_tokens=max(1, int(rng.lognormvariate(math.log(900), 1.0))),
            output_tokens=out_tok, cached_tokens=0,
            output_tokens_per_s=1e6 / tpot if out_tok > 1 else None,
            cost_usd=out_tok * 2e-7,
        )  # fmt: skip
        out.append(as_row(rec))
    return out


def _insert_rate(store: Any, rows: list[tuple[Any, ...]], batch: int = 10_000) -> float:
    cols = columns(RequestRecord)
    # Warm-up (types cache, first parts) with other rows: a block equal to the first
    # timed one would be dropped by the table's insert deduplication, and with it that
    # insert's work.
    warm = _records(batch, seed=2)
    store.insert_rows("requests", cols, warm)
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        store.insert_rows("requests", cols, rows[i : i + batch])
    rate = len(rows) / (time.perf_counter() - start)
    (stored,) = store.query("SELECT count() FROM requests").rows[0]
    assert stored == len(rows) + len(warm), (stored, len(rows) + len(warm))
    return rate


def section_insert_chdb(n: int) -> dict[str, Any]:
    from controlplane.store.chdb_driver import ChdbStore
    from controlplane.store.migrate import migrate

    with tempfile.TemporaryDirectory() as d:
        store = ChdbStore(d, database="bench")
        migrate(store)
        rate = _insert_rate(store, _records(n))
        store.close()
    return {"driver": "chdb", "rows": n, "rows_per_s": rate}


def section_insert_clickhouse(n: int) -> dict[str, Any]:
    from controlplane.store.clickhouse_driver import ClickHouseStore
    from controlplane.store.migrate import migrate

    with tempfile.TemporaryDirectory() as d:
        front = subprocess.Popen(
            [sys.executable, "-m", "tests.support.chdb_http", "--data-dir", d, "--port", "0"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert front.stdout is not None
            line = front.stdout.readline().split()
            assert line[:1] == ["LISTENING"], line
            store = ClickHouseStore(f"http://{line[1]}:{line[2]}", database="bench")
            migrate(store)
            rate = _insert_rate(store, _records(n))
            store.close()
        finally:
            front.terminate()
            front.wait(timeout=30)
            if front.stdout is not None:
                front.stdout.close()
    return {"driver": "clickhouse (HTTP front over chDB)", "rows": n, "rows_per_s": rate}


def _dataset(name: str, rows: int) -> Any:
    from bench.datagen import generate
    from controlplane.store.chdb_driver import ChdbStore
    from controlplane.store.migrate import migrate

    store = ChdbStore(DATA / name, database="bench")
    migrate(store)
    have = int(store.query("SELECT count() FROM requests").rows[0][0])
    if have < rows:
        if have:
            raise SystemExit(f"{DATA / name} has {have:,} rows, fewer than {rows:,}: delete it")
        print(f"generating {rows:,} rows into {DATA / name} ...", file=sys.stderr)
        generate(store, rows)
    return store


def section_bytes(rows: int) -> dict[str, Any]:
    """Bytes per row with the default ``store.trace_ids`` policy, and with ``all``.

    The generated rows carry ids on every row (``all``); the default policy's rows are the
    same rows copied with ids blanked as the policy would have."""
    from controlplane.config import StoreConfig

    store = _dataset(f"req{rows // 1_000_000}m", rows)
    store.command("OPTIMIZE TABLE requests FINAL")
    q = store.query(
        "SELECT sum(rows), sum(bytes_on_disk) FROM system.parts "
        "WHERE database = 'bench' AND table = 'requests' AND active"
    ).rows[0]
    per_col = store.query(
        "SELECT column, sum(column_data_compressed_bytes) / sum(rows) AS b "
        "FROM system.parts_columns WHERE database = 'bench' AND table = 'requests' AND active "
        "GROUP BY column ORDER BY b DESC"
    ).rows
    default = StoreConfig()
    exemplars = _exemplar_bytes(store, default.trace_id_sample_ratio)
    rollup = store.query(
        "SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts "
        "WHERE database = 'bench' AND table IN ('requests_1m', 'requests_1h') AND active "
        "GROUP BY table ORDER BY table"
    ).rows
    store.close()
    all_ids = {"bytes_per_row": q[1] / q[0], "share_keeping_ids": 1.0}
    by_mode = {"all": all_ids, "exemplars": exemplars}
    return {
        "rows": int(q[0]), "default_trace_ids": default.trace_ids,
        "bytes_per_row_default": by_mode[default.trace_ids]["bytes_per_row"],
        "trace_ids_all": all_ids, "trace_ids_exemplars": exemplars,
        "columns_with_all_ids": {c: round(b, 2) for c, b in per_col},
        "rollups": {t: {"rows": int(r), "bytes": int(b)} for t, r, b in rollup},
    }  # fmt: skip


def _keep_ids_sql(sample_ratio: float) -> str:
    """collector.exemplars.TraceIdPolicy("exemplars") restated in SQL for this measurement:
    errors, slow TTFT or end-to-end, or a trace id whose first four bytes (big-endian)
    fall in the sample."""
    from collector.exemplars import TraceIdPolicy

    p = TraceIdPolicy("exemplars", sample_ratio=sample_ratio)
    return (
        f"status != 'ok' OR ifNull(ttft_us, 0) >= {p.slow_ttft_us} "
        f"OR ifNull(e2e_us, 0) >= {p.slow_e2e_us} "
        "OR reinterpretAsUInt32(reverse(substring(trace_id, 1, 4))) / 4294967295 "
        f"< {p.sample_ratio!r}"
    )


def _exemplar_bytes(store: Any, sample_ratio: float) -> dict[str, Any]:
    """Bytes per row of the same rows with ids kept only as ``store.trace_ids: exemplars``."""
    cols = [r[0] for r in store.query(
        "SELECT name FROM system.columns WHERE database = 'bench' AND table = 'requests' "
        "ORDER BY position"
    ).rows]  # fmt: skip
    width = {"trace_id": 16, "span_id": 8}
    keep = _keep_ids_sql(sample_ratio)
    select = ", ".join(
        f"if({keep}, {c}, toFixedString('', {width[c]}))" if c in width else c for c in cols
    )
    store.command("DROP TABLE IF EXISTS requests_exemplars")
    store.command("CREATE TABLE requests_exemplars AS requests")
    try:
        store.command(f"INSERT INTO requests_exemplars SELECT {select} FROM requests")
        store.command("OPTIMIZE TABLE requests_exemplars FINAL")
        rows, size = store.query(
            "SELECT sum(rows), sum(bytes_on_disk) FROM system.parts "
            "WHERE database = 'bench' AND table = 'requests_exemplars' AND active"
        ).rows[0]
        kept = store.query(
            "SELECT avg(trace_id != toFixedString('', 16)) FROM requests_exemplars"
        ).rows[0][0]
    finally:
        store.command("DROP TABLE IF EXISTS requests_exemplars")
    return {"bytes_per_row": size / rows, "share_keeping_ids": kept}


RAW_SLI = """
SELECT countIf(ttft_us <= {t:UInt32}), count()
FROM requests
WHERE pool = {pool:String} AND status = 'ok' AND ttft_us IS NOT NULL
  AND ts >= {since:DateTime64(6, 'UTC')} AND ts < {until:DateTime64(6, 'UTC')}
"""


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def section_sli(rows: int, runs: int = 9) -> dict[str, Any]:
    """Raw scan, the previous rollup read and reads through ``RollupCache``, side by side."""
    from controlplane.store.rollups import RollupCache, Selector, latency_good_total

    store = _dataset(f"req{rows // 1_000_000}m", rows)
    until_ts = store.query("SELECT max(ts) FROM requests").rows[0][0]
    until = until_ts.replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = until - timedelta(days=28)
    pool, sel = "chat-8b", Selector(pool="chat-8b")
    pool_rows = int(store.query(
        "SELECT count() FROM requests WHERE pool = {p:String}", {"p": pool}
    ).rows[0][0])  # fmt: skip
    load_start = _load()

    def previous() -> tuple[int, int]:
        gt = latency_good_total(store, sel, "ttft", 0.25, since, until)
        return gt.good, gt.total

    def cold() -> tuple[int, int]:  # an empty cache every time: what a first read costs
        gt = latency_good_total(store, sel, "ttft", 0.25, since, until, RollupCache())
        return gt.good, gt.total

    cache = RollupCache()

    def cached() -> tuple[int, int]:  # the same window again
        gt = latency_good_total(store, sel, "ttft", 0.25, since, until, cache)
        return gt.good, gt.total

    sliding = RollupCache()
    step = iter(range(10_000))

    def slid() -> tuple[int, int]:  # the window one minute later each read, as a loop sees it
        k = timedelta(minutes=next(step))
        gt = latency_good_total(store, sel, "ttft", 0.25, since + k, until + k, sliding)
        return gt.good, gt.total

    def raw() -> tuple[int, int]:
        r = store.query(RAW_SLI, {"t": 250_000, "pool": pool, "since": since, "until": until})
        return int(r.rows[0][0]), int(r.rows[0][1])

    reads = {"raw": raw, "previous": previous, "cold": cold, "cached": cached, "sliding": slid}
    answers = {name: fn() for name, fn in reads.items()}  # warm-up
    for _ in range(2):  # a cache holds buckets from its third call on
        cached(), slid()
    times: dict[str, list[float]] = {name: [] for name in reads}
    for _ in range(runs):  # round robin, so load changes hit every read alike
        for name, fn in reads.items():
            start = time.perf_counter()
            answers[name] = fn()
            times[name].append(time.perf_counter() - start)
    total_rows = int(store.query("SELECT count() FROM requests").rows[0][0])
    store.close()
    # 250 ms is a bucket bound: every read must give the raw scan's exact answer.
    fixed = {name: a for name, a in answers.items() if name != "sliding"}
    assert len(set(fixed.values())) == 1, fixed
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "rows": total_rows, "pool_rows": pool_rows, "window_days": 28, "threshold_ms": 250,
        "runs": runs, "load_start": load_start, "load_end": _load(),
        "median_s": med, "min_s": {name: min(t) for name, t in times.items()},
        "speedup": {name: med["raw"] / med[name] for name in reads if name != "raw"},
        "answers": {name: a for name, a in answers.items() if name != "sliding"},
        "agree": len({a for name, a in answers.items() if name != "sliding"}) == 1,
        "cache_stats": vars(cache.stats), "sliding_cache_stats": vars(sliding.stats),
    }  # fmt: skip


SECTIONS = {
    "insert_chdb": section_insert_chdb,
    "insert_clickhouse": section_insert_clickhouse,
    "bytes": section_bytes,
    "sli": section_sli,
}


def _run_section(name: str, arg: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.store", "--section", name, "--arg", str(arg)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"section {name} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--insert-rows", type=int, default=200_000)
    ap.add_argument("--bytes-rows", type=int, default=10_000_000)
    ap.add_argument("--sli-rows", type=int, default=100_000_000)
    ap.add_argument("--only", choices=["insert", "bytes", "sli"], action="append")
    ap.add_argument("--section", choices=sorted(SECTIONS), help=argparse.SUPPRESS)
    ap.add_argument("--arg", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.section:
        print(json.dumps(SECTIONS[args.section](args.arg), default=str))
        return
    only = set(args.only or ["insert", "bytes", "sli"])
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores",
        "when": datetime.now(UTC).isoformat(),
    }
    if "insert" in only:
        a = _run_section("insert_chdb", args.insert_rows)
        b = _run_section("insert_clickhouse", args.insert_rows)
        report["insert"] = [a, b, {"ratio_clickhouse_over_chdb": b["rows_per_s"] / a["rows_per_s"]}]
    if "bytes" in only:
        report["bytes"] = _run_section("bytes", args.bytes_rows)
    if "sli" in only:
        report["sli"] = _run_section("sli", args.sli_rows)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
