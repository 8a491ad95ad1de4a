"""LLMSpanProcessor in a real OTel SDK TracerProvider: maps off-thread, never blocks or raises."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from collector.genai import AttributeMapping
from collector.records import ListSink
from collector.spans import LLMSpanProcessor

VLLM = {
    "gen_ai.response.model": "llama-8b",
    "gen_ai.usage.prompt_tokens": 100,
    "gen_ai.usage.completion_tokens": 11,
    "gen_ai.latency.time_to_first_token": 0.1,
    "gen_ai.latency.e2e": 1.1,
    "gen_ai.latency.time_in_queue": 0.01,
}


class GatedSink:
    """A sink whose emit blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.records: list[Any] = []

    def emit(self, records: Sequence[Any]) -> None:
        self.entered.set()
        self.gate.wait(30)
        self.records.extend(records)


class FailingSink:
    def __init__(self) -> None:
        self.calls = 0

    def emit(self, records: Sequence[Any]) -> None:
        self.calls += 1
        raise RuntimeError("sink is broken")


def provider_with(proc: LLMSpanProcessor, service: str = "chat-8b") -> TracerProvider:
    tp = TracerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": "r-0"})
    )
    tp.add_span_processor(proc)
    return tp


def end_llm_span(tracer: Any, attrs: dict[str, Any] | None = None) -> None:
    with tracer.start_as_current_span(
        "llm_request", kind=SpanKind.SERVER, attributes=attrs or VLLM
    ):
        pass


def test_llm_spans_from_the_sdk_become_request_records():
    sink = ListSink()
    proc = LLMSpanProcessor(sink)
    tp = provider_with(proc)
    tracer = tp.get_tracer("test")
    try:
        with tracer.start_as_current_span(
            "llm_request", kind=SpanKind.SERVER, attributes=VLLM
        ) as span:
            ctx = span.get_span_context()
        with tracer.start_as_current_span("GET /health"):
            pass
        assert proc.force_flush(5000)
    finally:
        tp.shutdown()
    assert len(sink.records) == 1
    r = sink.records[0]
    assert (r.pool, r.replica, r.model) == ("chat-8b", "r-0", "llama-8b")
    assert (r.ttft_us, r.e2e_us, r.queue_us, r.tpot_us) == (100_000, 1_100_000, 10_000, 100_000)
    assert (r.input_tokens, r.output_tokens) == (100, 11)
    assert r.trace_id == format(ctx.trace_id, "032x")
    assert r.span_id == format(ctx.span_id, "016x")
    assert r.attributes["span.kind"] == "server"
    assert (proc.mapped, proc.ignored) == (1, 1)


def test_error_status_of_an_sdk_span_marks_the_row_failed():
    sink = ListSink()
    proc = LLMSpanProcessor(sink)
    tp = provider_with(proc)
    try:
        span = tp.get_tracer("t").start_span("chat m", attributes={"gen_ai.operation.name": "chat"})
        span.set_status(Status(StatusCode.ERROR, "upstream 503"))
        span.end()
        assert proc.force_flush(5000)
    finally:
        tp.shutdown()
    assert [(r.status, r.error_type) for r in sink.records] == [("error", "_OTHER")]


def test_full_queue_drops_and_counts_without_blocking_the_caller():
    sink = GatedSink()
    registry = CollectorRegistry()
    proc = LLMSpanProcessor(sink, queue_max=2, batch_max=1, registry=registry)
    tp = provider_with(proc)
    tracer = tp.get_tracer("t")
    try:
        end_llm_span(tracer)
        assert sink.entered.wait(10)  # the worker now holds one span and is stuck in emit
        for _ in range(5):  # returns at once although the sink is blocked
            end_llm_span(tracer)
        assert proc.dropped == 3
        assert proc.queue_size() == 2
        assert registry.get_sample_value("governor_spans_dropped_total") == 3
        assert registry.get_sample_value("governor_spans_queue_size") == 2
        sink.gate.set()
        assert proc.force_flush(5000)
    finally:
        sink.gate.set()
        tp.shutdown()
    assert len(sink.records) == 3
    assert registry.get_sample_value("governor_spans_mapped_total") == 3


def test_force_flush_returns_false_when_the_sink_does_not_finish_in_time():
    sink = GatedSink()
    proc = LLMSpanProcessor(sink)
    tp = provider_with(proc)
    try:
        end_llm_span(tp.get_tracer("t"))
        assert proc.force_flush(50) is False
        sink.gate.set()
        assert proc.force_flush(5000) is True
        assert len(sink.records) == 1
    finally:
        sink.gate.set()
        tp.shutdown()


def test_shutdown_returns_after_its_timeout_even_if_the_sink_is_stuck():
    sink = GatedSink()
    proc = LLMSpanProcessor(sink)
    tp = provider_with(proc)
    end_llm_span(tp.get_tracer("t"))
    proc.force_flush(0)
    assert sink.entered.wait(10)
    done = threading.Event()
    t = threading.Thread(target=lambda: (proc.shutdown(timeout_millis=50), done.set()))
    t.start()
    assert done.wait(10), "shutdown did not honour its timeout"
    sink.gate.set()
    t.join(10)
    proc._worker.join(10)
    assert not proc._worker.is_alive()
    assert len(sink.records) == 1


def test_spans_ended_after_shutdown_are_dropped_and_counted():
    sink = ListSink()
    proc = LLMSpanProcessor(sink)
    tp = provider_with(proc)
    tracer = tp.get_tracer("t")
    proc.shutdown()
    end_llm_span(tracer)
    assert proc.dropped == 1
    assert sink.records == []


def test_shutdown_drains_what_was_queued():
    sink = ListSink()
    proc = LLMSpanProcessor(sink, interval_s=60)
    tp = provider_with(proc)
    for _ in range(7):
        end_llm_span(tp.get_tracer("t"))
    tp.shutdown()
    assert len(sink.records) == 7


def test_a_failing_sink_is_counted_and_the_worker_keeps_going():
    sink = FailingSink()
    proc = LLMSpanProcessor(sink)
    tp = provider_with(proc)
    try:
        end_llm_span(tp.get_tracer("t"))
        assert proc.force_flush(5000)
        end_llm_span(tp.get_tracer("t"))
        assert proc.force_flush(5000)
    finally:
        tp.shutdown()
    assert sink.calls == 2
    assert proc.emit_errors == 2


def test_unmappable_llm_spans_are_counted_and_the_rest_still_flow():
    sink = ListSink()
    registry = CollectorRegistry()
    proc = LLMSpanProcessor(sink, registry=registry)
    tp = provider_with(proc)
    try:
        end_llm_span(tp.get_tracer("t"), {**VLLM, "gen_ai.usage.prompt_tokens": "lots"})
        end_llm_span(tp.get_tracer("t"))
        assert proc.force_flush(5000)
    finally:
        tp.shutdown()
    assert len(sink.records) == 1
    assert registry.get_sample_value("governor_spans_rejected_total") == 1


class ExplodingSpan:
    name = "llm_request"

    @property
    def attributes(self) -> dict[str, Any]:
        raise RuntimeError("broken span")


def test_on_end_never_raises_into_the_instrumented_code():
    proc = LLMSpanProcessor(ListSink())
    try:
        proc.on_end(ExplodingSpan())  # type: ignore[arg-type]
        assert proc.dropped == 1
    finally:
        proc.shutdown()


def test_mapping_configuration_is_applied_by_the_worker():
    sink = ListSink()
    proc = LLMSpanProcessor(sink, mapping=AttributeMapping(pool_keys=("team.pool",)))
    tp = provider_with(proc)
    try:
        end_llm_span(tp.get_tracer("t"), {**VLLM, "team.pool": "blue"})
        assert proc.force_flush(5000)
    finally:
        tp.shutdown()
    assert sink.records[0].pool == "blue"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"queue_max": 0}, "queue_max must be at least 1"),
        ({"batch_max": 0}, "batch_max must be at least 1"),
        ({"interval_s": 0}, "interval_s must be positive"),
    ],
    ids=["an empty queue is refused", "an empty batch is refused", "a zero interval is refused"],
)
def test_bad_options_are_refused_at_construction(kw, message):
    with pytest.raises(ValueError, match=message):
        LLMSpanProcessor(ListSink(), **kw)
