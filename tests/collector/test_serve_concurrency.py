"""``serve`` wiring: a self-hosted request is charged its share of the replica.

vLLM batches many requests on one replica; charging each its full GPU time at the
replica's price would overstate cost by the batch size. The scraper's ``running`` gauge
(real vLLM text on loopback: 14 + 11 requests over two engines) reaches the OTLP
ingest's pricer through the shared ``ConcurrencyTracker``.
"""

from __future__ import annotations

import time
import uuid

import pytest

from controlplane.api.auth import TokenAuth
from controlplane.clock import ManualClock
from controlplane.config import parse_config
from controlplane.ingest import SERVICE, WRITER_SERVICE, build_otlp_ingest
from controlplane.scraping import SERVICE as SCRAPE_SERVICE
from controlplane.scraping import build_scrape
from controlplane.server import build_context
from controlplane.store.chdb_driver import ChdbStore
from tests.fakes.metrics_server import fixture, metrics_server
from tests.support.otlp_bodies import body_of

PROTO = "application/x-protobuf"
GPU_TIME_S = 2.5  # TTFT 0.5 s (prefill) + 2.0 s to the last token (decode)
FULL_USD = 36.0 / 3600 * GPU_TIME_S  # the replica's price for that time: $36 per hour


def export(replica: str) -> bytes:
    now = time.time_ns()
    span = {"name": "chat llama", "kind": 3, "trace_id": uuid.uuid4().bytes,
            "span_id": uuid.uuid4().bytes[:8], "start": now - int(GPU_TIME_S * 1e9), "end": now,
            "status": 0, "message": "",
            "attrs": [("gen_ai.operation.name", "chat"), ("gen_ai.usage.input_tokens", 900),
                      ("gen_ai.usage.output_tokens", 120),
                      ("gen_ai.response.time_to_first_chunk", 0.5)]}  # fmt: skip
    return body_of([([("service.name", "chat"), ("service.instance.id", replica)], [span])])


def test_requests_are_charged_their_share_of_the_replica_the_scraper_saw(
    store: ChdbStore, tmp_path
) -> None:
    clock = ManualClock(time.time())
    with metrics_server() as srv:
        url = srv.serve("/metrics", fixture("vllm.txt"))
        cfg = parse_config(
            {
                "pools": [
                    {"name": "chat", "model": "llama", "gpu_hour_usd": 36.0, "gpus_per_replica": 1}
                ],
                "scrape": {
                    "targets": [{"url": url, "kind": "vllm", "pool": "chat", "replica": "chat-0"}]
                },
            },
            source=str(tmp_path / "governor.yaml"),
        )
        ctx = build_context(
            cfg, store, TokenAuth({"t" * 24: "viewer"}), clock=clock,
            builders=[build_otlp_ingest, build_scrape],
        )  # fmt: skip
        writer, ingest = ctx.services[WRITER_SERVICE], ctx.services[SERVICE]
        writer.start()
        try:
            ingest.handle(export("chat-0"), PROTO, None)  # not scraped yet: full price
            ctx.services[SCRAPE_SERVICE].scraper.scrape_once()
            ingest.handle(export("chat-0"), PROTO, None)  # 25 running: a 25th
            ingest.handle(export("chat-9"), PROTO, None)  # a replica no target reports
            clock.advance(121)  # the reading is too old to trust
            ingest.handle(export("chat-0"), PROTO, None)
            assert writer.flush(30)
        finally:
            writer.stop()
    rows = store.query("SELECT replica, toFloat64(cost_usd) FROM requests ORDER BY ts").rows
    assert [r for r, _ in rows] == ["chat-0", "chat-0", "chat-9", "chat-0"]
    costs = [c for _, c in rows]
    assert costs == pytest.approx([FULL_USD, FULL_USD / 25, FULL_USD, FULL_USD], rel=1e-6)
    running = store.query("SELECT running FROM replica_samples WHERE replica = 'chat-0'").rows
    assert running == [(25.0,)]  # the samples still reach the store through the tracker
