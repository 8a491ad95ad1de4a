"""OTLP/HTTP ingest into the embedded store, spans/s, beside decode-only of the same payloads.

Payloads are what the real exporter sends: vLLM-shaped ``llm_request`` spans made by the
OTel SDK and encoded by ``opentelemetry-exporter-otlp-proto-common`` (protobuf, the bytes
``OTLPSpanExporter`` posts), ``--batch`` spans per request (the BatchSpanProcessor
default is 512).

Stages, same payloads, one run (all but ``http`` on one core; stages 1-5 are the best of
``--repeat`` runs, the others run once):

1. ``parse``: ``ExportTraceServiceRequest.ParseFromString`` only (upb, the floor).
2. ``old decode``: ``collector.otlp.decode`` (parse + attribute dicts for LLM spans, only
   the keys the mapping reads).
3. ``old decode+map``: the per-span path, ``OtlpIngest.handle`` into a record sink
   (``map_span`` + cost per span: the pool is priced by GPU-hour, as in the serve config).
4. ``C decode``: ``collector._otlpcols.decode`` alone (per-span columns, no mapping).
5. ``columnar decode+map``: ``OtlpIngest.handle`` into an Arrow sink (the C decoder, the
   vectorized mapping and cost, the Arrow table) - what serve does for protobuf bodies.
6. ``insert_arrow``: those tables inserted into chDB, ``--insert-batch`` rows per insert.
7. ``pipeline``: ``OtlpIngest.handle`` -> real ``Writer`` -> embedded chDB, in process.
8. ``http``: ``governor serve`` in a subprocess pinned to one core (``taskset -c 0``),
   the client pinned to the other; from the first POST until the writer reports every
   row inserted (``governor_writer_inserted_rows_total``). 503s (writer queue full) are
   retried after 50 ms, as an exporter retries. ``--http-clients`` exporters post at
   once (default 4, threads of the client process, each on its own connection, each its
   share of the requests in order): one client waits for each answer, so serve idles
   between requests and the figure is the round trip's, not serve's capacity.

    .venv/bin/python -m bench.otlp_ingest [--spans 50000] [--batch 512] [--profile]
    .venv/bin/python -m bench.otlp_ingest --http-batches 20000,50000  # stage 8 only
    .venv/bin/python -m bench.otlp_ingest --http-clients 1,4  # stage 8, 1 vs 4 clients
    .venv/bin/python -m bench.otlp_ingest --http-trees ,/tmp/old  # this tree vs a checkout
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind

from collector.genai import wanted_keys
from collector.otlp import PROTOBUF, decode
from controlplane.ingest import IngestOverloaded, OtlpIngest

TOKENS = "viewer:bench-viewer-token-0000,admin:bench-admin-token-00000"


class NullSink:
    def emit(self, records: Sequence[Any]) -> None:
        pass


class NullArrowSink(NullSink):
    def emit_arrow(self, table: str, data: Any) -> None:
        pass


def payloads(total: int, batch: int) -> list[bytes]:
    tp = TracerProvider(
        resource=Resource.create({"service.name": "chat-8b", "service.instance.id": "chat-8b-0"})
    )
    tracer = tp.get_tracer("vllm.entrypoints.openai.api_server")
    now = time.time_ns()
    out = []
    for start in range(0, total, batch):
        spans: list[ReadableSpan] = []
        for i in range(start, min(start + batch, total)):
            span = tracer.start_span("llm_request", kind=SpanKind.SERVER,
                                     start_time=now - 5_000_000_000 + i * 1000, attributes={
                "gen_ai.response.model": "meta-llama/Llama-3.1-8B-Instruct",
                "gen_ai.request.id": f"cmpl-{i}",
                "gen_ai.request.max_tokens": 512,
                "gen_ai.request.temperature": 0.7,
                "gen_ai.usage.prompt_tokens": 800 + i % 400,
                "gen_ai.usage.completion_tokens": 100 + i % 300,
                "gen_ai.latency.time_in_queue": 0.01 + (i % 7) / 1000,
                "gen_ai.latency.time_to_first_token": 0.2 + (i % 50) / 1000,
                "gen_ai.latency.e2e": 4.2 + (i % 90) / 100,
                "gen_ai.latency.time_in_model_prefill": 0.19,
                "gen_ai.latency.time_in_model_decode": 4.0,
                "gen_ai.latency.time_in_model_inference": 4.19,
            })  # fmt: skip
            span.end(end_time=now)
            spans.append(cast(ReadableSpan, span))  # the SDK's spans are ReadableSpans
        out.append(encode_spans(spans).SerializeToString())
    return out


REPEAT = 3


def timed(fn: Callable[[], Any]) -> float:
    """Best of ``REPEAT`` runs: the machine is shared, the minimum is the least disturbed."""
    best = float("inf")
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def stage_parse(bodies: list[bytes]) -> None:
    for b in bodies:
        ExportTraceServiceRequest.FromString(b)


def stage_decode(bodies: list[bytes]) -> None:
    wanted = wanted_keys()  # as the receiver decodes: only keys the mapping reads
    for b in bodies:
        decode(b, PROTOBUF, wanted=wanted)


def pricer() -> Any:
    """What serve builds from the bench config: the pool priced by GPU-hour, each request
    charged its share of the replica's latest scraped ``running`` gauge (here 24)."""
    from collector.pricing import ConcurrencyTracker, Pricer
    from collector.records import ReplicaSample

    tracker = ConcurrencyTracker()
    tracker.emit([ReplicaSample(ts=datetime.now(UTC), pool="chat-8b", replica="chat-8b-0",
                                running=24.0)])  # fmt: skip
    return Pricer.from_config(
        None, [{"name": "chat-8b", "gpu_hour_usd": 2.49}], concurrency=tracker
    )


CONFIG = (
    "pools:\n  - {name: chat-8b, model: meta-llama/Llama-3.1-8B-Instruct, gpu_hour_usd: 2.49}\n"
)


def _check(accepted: int, expect: int | None) -> None:
    """Every span posted became a row: a stage that skipped or refused some would
    report a rate for work it did not do."""
    assert expect is None or accepted == expect, f"{accepted} rows from {expect} spans"


def stage_map(bodies: list[bytes], expect: int | None = None) -> None:
    ingest = OtlpIngest(NullSink(), pricer=pricer())
    assert not ingest.columnar
    _check(sum(ingest.handle(b, PROTOBUF, None).accepted for b in bodies), expect)


def stage_c_decode(bodies: list[bytes]) -> None:
    from collector import _otlpcols
    from collector.genai import LAT_E2E, OPERATION, SYSTEM

    keys = tuple(sorted(wanted_keys()))
    markers = tuple(keys.index(k) for k in (OPERATION, SYSTEM, LAT_E2E))
    for b in bodies:
        _otlpcols.decode(b, keys, markers, "llm_request")


def stage_columnar(bodies: list[bytes], expect: int | None = None) -> None:
    ingest = OtlpIngest(NullArrowSink(), pricer=pricer())
    assert ingest.columnar, "collector._otlpcols is not built"
    _check(sum(ingest.handle(b, PROTOBUF, None).accepted for b in bodies), expect)


class ArrowListSink(NullSink):
    def __init__(self) -> None:
        self.tables: list[Any] = []

    def emit_arrow(self, table: str, data: Any) -> None:
        self.tables.append(data)


class ListSink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def emit(self, records: Sequence[Any]) -> None:
        self.records.extend(records)


def stage_insert(
    bodies: list[bytes], data_dir: Path, batch: int, expect: int | None = None
) -> float:
    """Store cost alone: the columnar path's tables, ``batch`` rows per ``insert_arrow``."""
    import pyarrow as pa

    from controlplane.store.chdb_driver import ChdbStore
    from controlplane.store.migrate import migrate

    sink = ArrowListSink()
    ingest = OtlpIngest(sink, pricer=pricer())
    for b in bodies:
        ingest.handle(b, PROTOBUF, None)
    table = pa.concat_tables(sink.tables)
    _check(table.num_rows, expect)
    store = ChdbStore(data_dir, database=f"b_{uuid.uuid4().hex[:8]}")
    migrate(store)
    try:
        store.insert_arrow("requests", table.slice(0, 1), dedup_token="warm-up")
        t0 = time.perf_counter()
        for i in range(0, table.num_rows, batch):
            store.insert_arrow("requests", table.slice(i, batch), dedup_token=uuid.uuid4().hex)
        elapsed = time.perf_counter() - t0
        (stored,) = store.query("SELECT count() FROM requests").rows[0]
        assert stored == table.num_rows + 1, (stored, table.num_rows + 1)  # + the warm-up
        return elapsed
    finally:
        store.close()


def stage_pipeline(
    bodies: list[bytes], data_dir: Path, writer_batch: int = 5000, expect: int | None = None
) -> float:
    from collector.writer import Writer
    from controlplane.store.chdb_driver import ChdbStore
    from controlplane.store.migrate import migrate

    store = ChdbStore(data_dir, database=f"b_{uuid.uuid4().hex[:8]}")
    migrate(store)
    queue_max = 5 * writer_batch
    writer = Writer(  # as serve builds it (controlplane.ingest.shared_writer)
        store, spool_dir=data_dir / "spool", batch_size=writer_batch,
        backlog_max_rows=4 * writer_batch, queue_max=queue_max,
    )  # fmt: skip
    writer.start()
    # With serve's back-pressure: a full queue refuses the request (retried below)
    # instead of the writer dropping the rows that do not fit.
    ingest = OtlpIngest(writer, pricer=pricer(), room=writer.room)
    assert ingest.columnar
    total = 0
    try:
        t0 = time.perf_counter()
        for b in bodies:
            while True:
                try:
                    total += ingest.handle(b, PROTOBUF, None).accepted
                    break
                except IngestOverloaded:
                    time.sleep(0.05)
        assert writer.flush(600), "writer did not drain"
        elapsed = time.perf_counter() - t0
        inserted = writer.stats().inserted_rows
    finally:
        writer.stop()
        store.close()
    dropped = writer.stats().dropped
    assert inserted == total and not any(dropped.values()), (inserted, total, dropped)
    _check(total, expect)
    return elapsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inserted(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(r'governor_writer_inserted_rows_total\{table="requests"\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def _post_all(url: str, bodies: list[bytes]) -> int:
    """POST each body in turn on one connection, as one exporter does; 503s retried."""
    retries = 0
    with httpx.Client(timeout=120) as client:
        for b in bodies:
            while True:
                r = client.post(f"{url}/v1/traces", content=b,
                                headers={"Content-Type": PROTOBUF})  # fmt: skip
                if r.status_code != 503:
                    break
                retries += 1
                time.sleep(0.05)
            r.raise_for_status()
    return retries


def stage_http(
    bodies: list[bytes],
    total: int,
    data_dir: Path,
    writer_batch: int,
    queue_max: int = 0,
    clients: int = 1,
    tree: str = "",
) -> float:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GOVERNOR_API_TOKENS": TOKENS}
    if tree:  # serve from another checkout (its C extension built in place)
        env["PYTHONPATH"] = tree
    config = data_dir / "governor.yaml"
    writer = f"writer:\n  batch_size: {writer_batch}\n"
    if queue_max:
        writer += f"  queue_max: {queue_max}\n"
    config.write_text(CONFIG + writer)
    cmd = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "controlplane.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir / "serve"),
        "--config",
        str(config),
    ]
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tree or None)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not become healthy")
            time.sleep(0.2)
        # ``clients`` exporters at once (a fleet has many), each its share in order.
        shares = [bodies[k::clients] for k in range(clients)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            retries = sum(pool.map(lambda share: _post_all(url, share), shares))
        posted = time.perf_counter() - t0
        while (inserted := _inserted(url)) < total:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("rows did not all arrive")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        assert inserted == total, f"serve inserted {inserted:.0f} rows for {total} spans"
        print(f"  (http, {clients} client(s): all POSTs answered after {posted:.2f}s;"
              f" {retries} retried after 503)")  # fmt: skip
        return elapsed
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def compare_http(
    bodies: list[bytes],
    n: int,
    tmp: Path,
    batches: list[int],
    clients: list[int],
    trees: list[str],
) -> None:
    """The HTTP stage for each source tree, writer batch size and number of clients,
    alternating, each in a fresh store."""
    configs = [(t, b, c) for t in trees for b in batches for c in clients]
    results: dict[tuple[str, int, int], list[float]] = {k: [] for k in configs}
    for r in range(REPEAT):
        for i, (t, b, c) in enumerate(configs):
            d = tmp / f"http-{i}-{r}"
            d.mkdir()
            secs = stage_http(bodies, n, d, b, queue_max=5 * b, clients=c, tree=t)
            results[(t, b, c)].append(n / secs)
            print(f"  round {r + 1} {t or 'this tree'}, batch {b:,}, {c} client(s):"
                  f" {n / secs:,.0f} spans/s", flush=True)  # fmt: skip
    print(f"{'tree':>16} {'writer batch':>12} {'queue_max':>10} {'clients':>8}"
          f" {'median spans/s':>15} {'runs':>30}")  # fmt: skip
    for (t, b, c), rates in results.items():
        runs = ", ".join(f"{x / 1000:.1f}k" for x in rates)
        print(f"{(t or 'this tree')[-16:]:>16} {b:>12,} {5 * b:>10,} {c:>8}"
              f" {statistics.median(rates):>15,.0f} {runs:>30}")  # fmt: skip
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def profile(bodies: list[bytes], data_dir: Path) -> str:
    prof = cProfile.Profile()
    prof.enable()
    stage_pipeline(bodies, data_dir)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=400_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process pipeline")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--insert-batch", type=int, default=50_000, help="rows per insert_arrow")
    ap.add_argument("--writer-batch", type=int, default=50_000, help="serve's batch_size")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for stages 1-5")
    ap.add_argument(
        "--http-batches",
        help="only the HTTP stage, for each writer batch size in this comma-separated list"
        " (queue_max 5x the batch), alternating, --repeat rounds",
    )
    ap.add_argument(
        "--http-clients",
        default="4",
        help="exporters posting at once (comma-separated list: compared, alternating)",
    )
    ap.add_argument(
        "--http-trees",
        help="only the HTTP stage, serve run from each source tree in this comma-separated"
        " list ('' is this one), alternating: compares code versions side by side",
    )
    args = ap.parse_args(argv)
    clients = [int(c) for c in args.http_clients.split(",")]
    trees = args.http_trees.split(",") if args.http_trees is not None else [""]
    global REPEAT
    REPEAT = max(args.repeat, 1)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # stages 1-5 on one core; serve gets the other
    bodies = payloads(args.spans, args.batch)
    n = args.spans
    size = sum(len(b) for b in bodies)
    print(
        f"{n} spans in {len(bodies)} requests of {args.batch}, {size / n:.0f} B/span protobuf;"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores;"
        f" writer batch {args.writer_batch}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-otlp-"))
    if args.http_batches or len(clients) > 1 or len(trees) > 1:
        batches = [int(b) for b in (args.http_batches or str(args.writer_batch)).split(",")]
        try:
            compare_http(bodies, n, tmp, batches, clients, trees)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    try:
        rows = [
            ("parse (upb only)", timed(lambda: stage_parse(bodies))),
            ("old decode", timed(lambda: stage_decode(bodies))),
            ("old decode+map", timed(lambda: stage_map(bodies, n))),
            ("C decode only", timed(lambda: stage_c_decode(bodies))),
            ("columnar decode+map", timed(lambda: stage_columnar(bodies, n))),
            (f"insert_arrow ({args.insert_batch})",
             stage_insert(bodies, tmp / "pipe", args.insert_batch, n)),
            ("pipeline -> chDB", stage_pipeline(bodies, tmp / "pipe", args.writer_batch, n)),
        ]  # fmt: skip
        if not args.no_http:
            secs = stage_http(bodies, n, tmp, args.writer_batch, clients=clients[0])
            rows.append((f"http ({clients[0]} clients) -> chDB", secs))
        base = rows[0][1]
        print(f"{'stage':<24} {'seconds':>8} {'spans/s':>10} {'us/span':>8} {'x parse':>8}")
        for name, secs in rows:
            print(
                f"{name:<24} {secs:>8.2f} {n / secs:>10,.0f} {secs / n * 1e6:>8.1f} "
                f"{secs / base:>8.1f}"
            )
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.profile:
            print(profile(bodies, tmp / "prof"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
