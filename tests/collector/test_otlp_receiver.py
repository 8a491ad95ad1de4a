"""POST /v1/traces on a real uvicorn server with a real store and writer.

The real ``OTLPSpanExporter`` (http/protobuf, what vLLM sends when its exporter
protocol is set to http/protobuf; its default is gRPC) exports to it; raw httpx
requests cover JSON, errors and limits.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind

from controlplane.api.app import create_app
from controlplane.api.auth import TokenAuth
from controlplane.config import GovernorConfig, parse_config
from controlplane.errors import ConfigError
from controlplane.ingest import SERVICE, WRITER_SERVICE, build_otlp_ingest
from controlplane.server import AppContext, build_context
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import migrate
from tests.support.otlp_bodies import body_of

VIEWER = "viewer-token-0123456789"
PROTO = "application/x-protobuf"


class Served:
    def __init__(self, ctx: AppContext, url: str) -> None:
        self.ctx = ctx
        self.url = url

    def flush(self) -> None:
        assert self.ctx.services[WRITER_SERVICE].flush(10)

    def requests(self, pool: str = "") -> list[dict[str, Any]]:
        self.flush()
        r = httpx.get(
            f"{self.url}/api/v1/requests",
            params={"since": "0", "pool": pool},
            headers={"Authorization": f"Bearer {VIEWER}"},
        )
        r.raise_for_status()
        return sorted(r.json()["requests"], key=lambda row: row["input_tokens"])


def _start(
    store: Any,
    spool: Path,
    config: dict[str, Any] | None,
    servers: list[tuple[uvicorn.Server, threading.Thread]],
) -> Served:
    config = dict(config or {})
    if "writer" in GovernorConfig.model_fields:  # keep each server's spool to itself
        config["writer"] = {**config.get("writer", {}), "spool_dir": str(spool)}
    cfg = parse_config(config)
    ctx = build_context(cfg, store, TokenAuth({VIEWER: "viewer"}), builders=[build_otlp_ingest])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # uvicorn exposes no event for this
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    servers.append((server, thread))
    return Served(ctx, f"http://127.0.0.1:{sock.getsockname()[1]}")


def _stop(servers: list[tuple[uvicorn.Server, threading.Thread]]) -> None:
    for server, thread in servers:
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def serve(store, tmp_path) -> Iterator[Any]:
    """A server with its own config and store, for tests that change the configuration."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    yield lambda config=None: _start(store, tmp_path / "spool", config, servers)
    _stop(servers)


@pytest.fixture(scope="module")
def shared(chdb_path, tmp_path_factory) -> Iterator[Served]:
    """One server for the tests that only read their own pool's rows. It keeps every trace
    id (not the default exemplars) so tests can check the ids landed."""
    st = ChdbStore(chdb_path, database=f"t_{uuid.uuid4().hex[:12]}")
    migrate(st)
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    config = {"store": {"trace_ids": "all"}}
    try:
        yield _start(st, tmp_path_factory.mktemp("spool"), config, servers)
    finally:
        _stop(servers)
        st.command(f"DROP DATABASE IF EXISTS {st.database}")
        st.close()


def export_with_sdk(
    url: str, spans: list[dict[str, Any]], service: str = "chat-8b", **exporter_kw: Any
) -> list[Any]:
    """Export spans through the real SDK + OTLP/HTTP exporter; returns the export results."""
    results: list[Any] = []

    class Recording(OTLPSpanExporter):
        def export(self, batch):  # type: ignore[no-untyped-def]
            result = super().export(batch)
            results.append(result)
            return result

    tp = TracerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": f"{service}-0"})
    )
    tp.add_span_processor(
        SimpleSpanProcessor(Recording(endpoint=f"{url}/v1/traces", timeout=10, **exporter_kw))
    )
    tracer = tp.get_tracer("vllm.entrypoints.openai")
    now = time.time_ns()
    for s in spans:
        span = tracer.start_span(
            s["name"],
            kind=s.get("kind", SpanKind.SERVER),
            start_time=now - 5_000_000_000,
            attributes=s["attributes"],
        )
        span.end(end_time=now)
    tp.shutdown()
    return results


VLLM_SPAN = {
    "name": "llm_request",
    "attributes": {
        "gen_ai.response.model": "meta-llama/Llama-3.1-8B-Instruct",
        "gen_ai.request.id": "cmpl-42",
        "gen_ai.usage.prompt_tokens": 812,
        "gen_ai.usage.completion_tokens": 201,
        "gen_ai.latency.time_to_first_token": 0.25,
        "gen_ai.latency.e2e": 4.25,
        "gen_ai.latency.time_in_queue": 0.05,
        "gen_ai.latency.time_in_model_prefill": 0.2,
        "gen_ai.latency.time_in_model_decode": 4.0,
    },
}


def test_the_real_otlp_http_exporter_lands_rows_with_the_right_values(shared):
    s = shared
    # Protobuf exports take the columnar path (C decoder, Arrow rows) in serve.
    assert s.ctx.services[SERVICE].columnar
    results = export_with_sdk(
        s.url, [VLLM_SPAN, {"name": "GET /health", "attributes": {}}], service="plain"
    )
    assert results == [SpanExportResult.SUCCESS, SpanExportResult.SUCCESS]
    (row,) = s.requests("plain")
    assert row["pool"] == "plain" and row["replica"] == "plain-0"
    assert row["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert row["ttft_ms"] == 250.0 and row["e2e_ms"] == 4250.0 and row["queue_ms"] == 50.0
    assert row["tpot_ms"] == 20.0 and row["decode_ms"] == 4000.0
    assert (row["input_tokens"], row["output_tokens"]) == (812, 201)
    assert row["output_tokens_per_s"] == pytest.approx(50.0)
    assert len(row["trace_id"]) == 32 and len(row["span_id"]) == 16


def test_gzip_compressed_exports_are_accepted(shared):
    s = shared
    results = export_with_sdk(s.url, [VLLM_SPAN], service="gzipped", compression=Compression.Gzip)
    assert results == [SpanExportResult.SUCCESS]
    assert len(s.requests("gzipped")) == 1


def json_doc(spans: list[dict[str, Any]], pool: str) -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": pool}}]
                    },
                    "scopeSpans": [{"spans": spans}],
                }
            ]
        }
    ).encode()


def json_span(i: int, **attrs: Any) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "traceId": f"{i:032x}",
        "spanId": f"{i:016x}",
        "name": "chat m",
        "kind": 3,
        "startTimeUnixNano": str(now - 1_000_000_000),
        "endTimeUnixNano": str(now),
        "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]
        + [{"key": k, "value": v} for k, v in attrs.items()],
    }


def test_otlp_json_is_accepted_and_answered_in_json(shared):
    s = shared
    body = json_doc([json_span(1, **{"gen_ai.usage.input_tokens": {"intValue": "7"}})], "json-pool")
    r = httpx.post(f"{s.url}/v1/traces", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {}
    (row,) = s.requests("json-pool")
    assert (row["pool"], row["input_tokens"], row["e2e_ms"]) == ("json-pool", 7, 1000.0)


def test_usual_exports_are_decoded_in_line_and_large_ones_on_a_worker_thread(shared, monkeypatch):
    from controlplane.api.routes import otlp as route

    offloaded: list[int] = []
    real = route.run_in_threadpool

    async def spy(fn: Any, body: bytes, *args: Any) -> Any:
        offloaded.append(len(body))
        return await real(fn, body, *args)

    monkeypatch.setattr(route, "run_in_threadpool", spy)
    s = shared

    def export(pool: str, n: int) -> bytes:
        now = time.time_ns()
        spans = [{"name": "chat m", "kind": 3, "trace_id": uuid.uuid4().bytes,
                  "span_id": uuid.uuid4().bytes[:8], "start": now - 10**9, "end": now,
                  "status": 0, "message": "",
                  "attrs": [("gen_ai.operation.name", "chat"), ("gen_ai.usage.input_tokens", 3)]}
                 for _ in range(n)]  # fmt: skip
        return body_of([([("service.name", pool)], spans)])

    small, large, squeezed = export("inline", 10), export("big", 12_000), export("gz", 10_000)
    squeezed = gzip.compress(squeezed)
    assert len(small) <= route.INLINE_MAX_BYTES < len(large)
    assert route.INLINE_MAX_GZIP_BYTES < len(squeezed) <= route.INLINE_MAX_BYTES
    json_small = json_doc([json_span(1, **{"gen_ai.usage.input_tokens": {"intValue": "3"}})],
                          "json-small")  # fmt: skip
    gz = {"Content-Encoding": "gzip"}
    cases = [(small, PROTO, {}), (large, PROTO, {}), (squeezed, PROTO, gz),
             (json_small, "application/json", {})]  # fmt: skip
    for body, ctype, extra in cases:
        r = httpx.post(f"{s.url}/v1/traces", content=body,
                       headers={"Content-Type": ctype} | extra, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.content
    # the small protobuf export in line; the large, the compressed one and JSON offloaded
    assert offloaded == [len(large), len(squeezed), len(json_small)]
    s.flush()
    counts = s.ctx.store.query(
        "SELECT pool, count() FROM requests WHERE pool IN ('inline', 'big', 'gz', 'json-small') "
        "GROUP BY pool ORDER BY pool"
    ).rows
    assert counts == [("big", 12_000), ("gz", 10_000), ("inline", 10), ("json-small", 1)]


def test_unmappable_spans_get_partial_success_and_the_good_ones_are_kept(shared):
    s = shared
    body = json_doc(
        [
            json_span(1, **{"gen_ai.usage.input_tokens": {"intValue": "5"}}),
            json_span(2, **{"gen_ai.usage.output_tokens": {"stringValue": "lots"}}),
        ],
        "partial",
    )
    r = httpx.post(f"{s.url}/v1/traces", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "gen_ai.usage.output_tokens: expected a number, got 'lots'" in partial["errorMessage"]
    assert [row["input_tokens"] for row in s.requests("partial")] == [5]


def test_a_malformed_body_gets_400_with_a_message_and_the_server_keeps_serving(shared):
    s = shared
    r = httpx.post(
        f"{s.url}/v1/traces",
        content=b"\x0a\xff\xff\xff",
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(r.content)
    assert "not a valid protobuf ExportTraceServiceRequest" in status.message
    r = httpx.post(
        f"{s.url}/v1/traces",
        content=b'{"resourceSpans": 3}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["message"] == "resourceSpans: expected an array, got int"
    assert export_with_sdk(s.url, [VLLM_SPAN], service="after-400") == [SpanExportResult.SUCCESS]
    assert len(s.requests("after-400")) == 1


def test_bodies_over_the_limit_get_413_even_when_they_arrive_gzipped(serve):
    s = serve({"server": {"otlp_max_body_bytes": 4096}})
    r = httpx.post(
        f"{s.url}/v1/traces",
        content=b"\0" * 5000,
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 413
    bomb = gzip.compress(b"\0" * 100_000)
    r = httpx.post(
        f"{s.url}/v1/traces",
        content=bomb,
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 413
    assert "limit of 4096" in status_pb2.Status.FromString(r.content).message


def test_other_content_types_get_415(shared):
    s = shared
    r = httpx.post(f"{s.url}/v1/traces", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert "application/x-protobuf" in r.json()["message"]


def test_a_configured_receiver_token_is_required(serve, monkeypatch):
    monkeypatch.setenv("TEST_OTLP_TOKEN", "otlp-secret-abcdef")
    s = serve({"ingest": {"receiver_token_env": "TEST_OTLP_TOKEN"}})
    assert export_with_sdk(s.url, [VLLM_SPAN]) == [SpanExportResult.FAILURE]
    r = httpx.post(
        f"{s.url}/v1/traces",
        content=b"",
        headers={"Content-Type": "application/x-protobuf", "Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401
    ok = export_with_sdk(s.url, [VLLM_SPAN], headers={"Authorization": "Bearer otlp-secret-abcdef"})
    assert ok == [SpanExportResult.SUCCESS]
    assert len(s.requests()) == 1


def test_a_receiver_token_variable_that_is_not_set_stops_startup(store, monkeypatch):
    monkeypatch.delenv("TEST_OTLP_TOKEN_MISSING", raising=False)
    cfg = parse_config({"ingest": {"receiver_token_env": "TEST_OTLP_TOKEN_MISSING"}})
    with pytest.raises(ConfigError, match="TEST_OTLP_TOKEN_MISSING is not set"):
        build_context(cfg, store, TokenAuth({VIEWER: "viewer"}), builders=[build_otlp_ingest])


def test_pools_configured_by_model_claim_spans_without_a_pool_attribute(serve):
    s = serve(
        {
            "pools": [{"name": "llama-pool", "model": "meta-llama/Llama-3.1-8B-Instruct"}],
            "ingest": {"pool_keys": ["governor.pool"]},
        }
    )
    export_with_sdk(s.url, [VLLM_SPAN])
    assert [row["pool"] for row in s.requests()] == ["llama-pool"]
    assert SERVICE in s.ctx.services


def test_a_full_writer_queue_answers_503_so_the_exporter_retries_and_nothing_is_half_taken(
    serve,
):
    s = serve({"writer": {"queue_max": 1}})
    two = json_doc([json_span(1), json_span(2)], "busy")
    r = httpx.post(f"{s.url}/v1/traces", content=two, headers={"Content-Type": "application/json"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "no room for 2 rows" in r.json()["message"]
    r = httpx.post(
        f"{s.url}/v1/traces",
        content=json_doc([json_span(3)], "busy"),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert [row["span_id"] for row in s.requests("busy")] == [f"{3:016x}"]
