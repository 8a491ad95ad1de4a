"""Trace ids kept for exemplars: errors, slow requests, and a sample stable per trace."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.exemplars import TraceIdPolicy
from collector.records import RequestRecord

NOW = datetime(2026, 11, 22, tzinfo=UTC)
LOW = "00000001" + "0" * 24  # hashes into the sample
HIGH = "ffffffff" + "0" * 24  # never sampled below ratio 1


def rec(trace: str = HIGH, **kw: object) -> RequestRecord:
    return RequestRecord(ts=NOW, trace_id=trace, span_id="b7ad6b7169203331", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "record", "kept"),
    [
        (TraceIdPolicy("all"), rec(), True),
        (TraceIdPolicy("none"), rec(status="error"), False),
        (TraceIdPolicy("exemplars"), rec(status="error"), True),
        (TraceIdPolicy("exemplars"), rec(ttft_us=1_000_000), True),
        (TraceIdPolicy("exemplars"), rec(ttft_us=999_999), False),
        (TraceIdPolicy("exemplars"), rec(e2e_us=31_000_000), True),
        (TraceIdPolicy("exemplars"), rec(trace=LOW), True),
        (TraceIdPolicy("exemplars", sample_ratio=0.0), rec(trace=LOW), False),
        (TraceIdPolicy("exemplars"), rec(trace="not-hex-at-all" + "0" * 18), False),
    ],
    ids=[
        "all keeps every id",
        "none drops even errors",
        "errors keep their ids",
        "a request at the slow TTFT keeps its ids",
        "just under the slow TTFT is sampled",
        "a very long request keeps its ids",
        "a trace hashing into the sample keeps its ids",
        "ratio zero samples nothing",
        "an unparsable trace id is not sampled",
    ],  # fmt: skip
)
def test_which_rows_keep_ids(policy: TraceIdPolicy, record: RequestRecord, kept: bool) -> None:
    out = policy.apply(record)
    assert (out.trace_id != "") is kept
    assert (out.span_id != "") is kept
    assert out.ttft_us == record.ttft_us and out.status == record.status


def test_the_sample_is_about_the_configured_share_and_stable_per_trace() -> None:
    policy = TraceIdPolicy("exemplars", sample_ratio=0.1)
    ids = [f"{(i * 2654435761) % 2**32:08x}" + "0" * 24 for i in range(10_000)]
    kept = [policy.keeps(rec(t)) for t in ids]
    assert 0.08 < sum(kept) / len(kept) < 0.12
    assert kept == [policy.keeps(rec(t)) for t in ids]


def test_a_ratio_outside_0_1_is_rejected() -> None:
    with pytest.raises(ValueError, match="sample_ratio must be within 0..1"):
        TraceIdPolicy("exemplars", sample_ratio=1.5)


def _otlp_body(spans: list[tuple[str, bool, float]]) -> bytes:
    """vLLM-shaped spans through the real SDK and encoder: (name, failed, ttft seconds)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for name, failed, ttft in spans:
        with tracer.start_as_current_span("llm_request", kind=SpanKind.SERVER) as span:
            span.set_attributes({
                "gen_ai.request.id": name, "gen_ai.response.model": "llama",
                "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 5,
                "gen_ai.latency.time_to_first_token": ttft, "gen_ai.latency.e2e": ttft + 0.1,
            })  # fmt: skip
            if failed:
                span.set_status(Status(StatusCode.ERROR))
    provider.shutdown()
    body: bytes = encode_spans(exporter.get_finished_spans()).SerializeToString()
    return body


def test_the_receiver_applies_the_configured_exemplar_policy() -> None:
    from collector.records import ListSink
    from controlplane.ingest import OtlpIngest

    sink = ListSink()
    ingest = OtlpIngest(sink, trace_ids=TraceIdPolicy("exemplars", sample_ratio=0.0))
    body = _otlp_body([("fast", False, 0.05), ("slow", False, 2.0), ("failed", True, 0.05)])
    result = ingest.handle(body, "application/x-protobuf", None)
    assert result.accepted == 3
    by_ttft = {(r.ttft_us, r.status): bool(r.trace_id and r.span_id) for r in sink.records}
    assert by_ttft == {(50_000, "ok"): False, (2_000_000, "ok"): True, (50_000, "error"): True}
