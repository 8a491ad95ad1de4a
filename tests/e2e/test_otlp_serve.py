"""``governor serve`` as vLLM and an instrumented gateway see it: OTLP/HTTP in, rows out.

The test process exports spans with the real OpenTelemetry SDK and the real
``OTLPSpanExporter`` (http/protobuf), exactly as vLLM does with
``--otlp-traces-endpoint http://HOST:PORT/v1/traces`` and
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from tests.conftest import ServeProcess, start_serve, stop_serve

# Each test starts a `governor serve` process (store open and migration included).
pytestmark = pytest.mark.slow

CONFIG = """
pools:
  - name: chat-8b
    model: meta-llama/Llama-3.1-8B-Instruct
    gpu_hour_usd: 2.49
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeProcess]:
    cfg = tmp_path / "governor.yaml"
    cfg.write_text(CONFIG)
    sp = start_serve(tmp_path, config=cfg)
    try:
        yield sp
    finally:
        stop_serve(sp)


def export(url: str, service: str, spans: list[tuple[str, SpanKind, dict[str, Any]]]) -> None:
    """What vLLM's tracing does: a TracerProvider, BatchSpanProcessor, OTLP/HTTP exporter."""
    # vLLM sets no service name unless OTEL_SERVICE_NAME is given; a gateway usually does.
    resource = Resource.create({"service.name": service} if service else {})
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    tracer = tp.get_tracer("vllm.entrypoints.openai.api_server")
    end = time.time_ns()
    for name, kind, attrs in spans:
        span = tracer.start_span(name, kind=kind, start_time=end - 3_000_000_000, attributes=attrs)
        span.end(end_time=end)
    assert tp.force_flush(30_000)
    tp.shutdown()


def rows(sp: ServeProcess, n: int) -> list[dict[str, Any]]:
    """Poll the API until ``n`` rows arrived (the writer flushes about once a second)."""
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"{sp.url}/api/v1/requests", params={"since": "0"}, headers=sp.headers())
        r.raise_for_status()
        found = r.json()["requests"]
        if len(found) >= n or time.monotonic() > deadline:
            return sorted(found, key=lambda row: row["input_tokens"])
        time.sleep(0.2)  # another process's writer: no event to wait on


def vllm_span(prompt: int, completion: int, ttft: float, e2e: float) -> dict[str, Any]:
    # Attribute set of vLLM's OutputProcessor.do_tracing (vllm/v1/engine/output_processor.py).
    return {
        "gen_ai.usage.prompt_tokens": prompt,
        "gen_ai.usage.completion_tokens": completion,
        "gen_ai.latency.time_to_first_token": ttft,
        "gen_ai.latency.e2e": e2e,
        "gen_ai.latency.time_in_queue": 0.02,
        "gen_ai.latency.time_in_model_prefill": ttft - 0.02,
        "gen_ai.latency.time_in_model_decode": e2e - ttft,
        "gen_ai.latency.time_in_model_inference": e2e - 0.02,
        "gen_ai.request.id": f"cmpl-{prompt}",
        "gen_ai.request.max_tokens": 512,
        "gen_ai.response.model": "meta-llama/Llama-3.1-8B-Instruct",
    }


def test_vllm_and_gateway_spans_become_request_rows(served: ServeProcess) -> None:
    export(
        served.url,
        "",
        [
            ("llm_request", SpanKind.SERVER, vllm_span(100, 51, 0.15, 1.15)),
            ("llm_request", SpanKind.SERVER, vllm_span(200, 101, 0.30, 2.30)),
        ],
    )
    export(
        served.url,
        "gateway",
        [
            (
                "chat gpt-4o-mini",
                SpanKind.CLIENT,
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 300,
                    "gen_ai.usage.output_tokens": 21,
                    "gen_ai.response.time_to_first_chunk": 0.5,
                    "gen_ai.response.finish_reasons": ["stop"],
                    "gen_ai.usage.cost": 0.000057,
                    "tenant.id": "acme",
                },
            ),
            ("GET /healthz", SpanKind.SERVER, {"http.request.method": "GET"}),
        ],
    )
    got = rows(served, 3)
    assert len(got) == 3
    a, b, gw = got
    # vLLM rows: no service name, so the configured pool serving that model claims them.
    for row, (inp, out, ttft_ms, tpot_ms) in (
        (a, (100, 51, 150.0, 20.0)),
        (b, (200, 101, 300.0, 20.0)),
    ):
        assert row["pool"] == "chat-8b"
        assert row["model"] == "meta-llama/Llama-3.1-8B-Instruct"
        assert (row["input_tokens"], row["output_tokens"]) == (inp, out)
        assert row["ttft_ms"] == pytest.approx(ttft_ms)
        assert row["tpot_ms"] == pytest.approx(tpot_ms)
        assert row["queue_ms"] == pytest.approx(20.0)
        assert row["output_tokens_per_s"] == pytest.approx(50.0, rel=1e-4)
        assert row["status"] == "ok"
    # Self-hosted pool at $2.49/GPU-hour: prefill (TTFT - queue) plus decode seconds.
    assert a["cost_usd"] == pytest.approx((0.13 + 1.0) * 2.49 / 3600, rel=1e-6)
    assert b["cost_usd"] == pytest.approx((0.28 + 2.0) * 2.49 / 3600, rel=1e-6)
    assert (gw["pool"], gw["tenant"], gw["model"]) == ("gateway", "acme", "gpt-4o-mini")
    assert gw["ttft_ms"] == pytest.approx(500.0) and gw["e2e_ms"] == pytest.approx(3000.0)
    assert gw["tpot_ms"] == pytest.approx(125.0)  # (3.0 - 0.5) s / 20 tokens
    assert gw["finish_reason"] == "stop"
    assert gw["cost_usd"] == pytest.approx(0.000057)  # no price configured: reported cost
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 'governor_otlp_spans_total{outcome="mapped"} 3.0' in metrics
    assert 'governor_otlp_spans_total{outcome="ignored"} 1.0' in metrics


def test_malformed_payloads_get_400_and_the_server_keeps_serving(served: ServeProcess) -> None:
    body = bytes.fromhex("0a8c01")  # resource_spans of 140 bytes announced, none sent
    r = httpx.post(
        f"{served.url}/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"}
    )
    assert r.status_code == 400
    message = status_pb2.Status.FromString(r.content).message
    assert "not a valid protobuf ExportTraceServiceRequest" in message
    r = httpx.post(
        f"{served.url}/v1/traces",
        content=b'{"resourceSpans": [{"scopeSpans": 1}]}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["message"] == "resourceSpans[0].scopeSpans: expected an array, got int"
    assert httpx.get(f"{served.url}/healthz").status_code == 200
    export(served.url, "", [("llm_request", SpanKind.SERVER, vllm_span(10, 2, 0.1, 0.2))])
    assert [row["input_tokens"] for row in rows(served, 1)] == [10]
