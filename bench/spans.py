"""``on_end`` cost: LLMSpanProcessor vs the SDK's BatchSpanProcessor (no-op exporter).

Both processors get the very same finished SDK spans in the same run, in alternating
rounds. Their workers are parked during the timed loop (batch and queue sizes above the
span count, long intervals) so the figure is the caller's cost alone: what a service pays
on the thread that ends the span. A second figure times on_end *plus* the worker draining
the queue (force_flush), which for LLMSpanProcessor includes mapping every span to a row.

    .venv/bin/python -m bench.spans [--spans 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from collector.spans import LLMSpanProcessor


class NoOpExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NullSink:
    def __init__(self) -> None:
        self.n = 0

    def emit(self, records: Sequence[Any]) -> None:
        self.n += len(records)


def make_spans(n: int, llm_share: float) -> list[ReadableSpan]:
    """Finished spans from a provider with no processor: vLLM-shaped and plain HTTP ones."""
    tp = TracerProvider(
        resource=Resource.create({"service.name": "chat-8b", "service.instance.id": "chat-8b-0"})
    )
    tracer = tp.get_tracer("bench")
    spans: list[ReadableSpan] = []
    every = max(int(round(1 / llm_share)), 1) if llm_share > 0 else 0
    for i in range(n):
        if every and i % every == 0:
            span = tracer.start_span(
                "llm_request",
                kind=SpanKind.SERVER,
                attributes={
                    "gen_ai.response.model": "meta-llama/Llama-3.1-8B-Instruct",
                    "gen_ai.request.id": f"cmpl-{i}",
                    "gen_ai.usage.prompt_tokens": 800 + i % 50,
                    "gen_ai.usage.completion_tokens": 200 + i % 30,
                    "gen_ai.latency.time_to_first_token": 0.2,
                    "gen_ai.latency.e2e": 4.2,
                    "gen_ai.latency.time_in_queue": 0.01,
                    "gen_ai.latency.time_in_model_prefill": 0.19,
                    "gen_ai.latency.time_in_model_decode": 4.0,
                    "gen_ai.latency.time_in_model_inference": 4.19,
                    "gen_ai.request.max_tokens": 512,
                },
            )
        else:
            span = tracer.start_span(
                "GET /v1/models",
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": "GET",
                    "url.path": "/v1/models",
                    "http.response.status_code": 200,
                    "server.address": "10.0.0.7",
                },
            )
        span.end()
        spans.append(span)  # type: ignore[arg-type]
    return spans


def parked_bsp(n: int) -> BatchSpanProcessor:
    return BatchSpanProcessor(
        NoOpExporter(),
        max_queue_size=n + 1,
        max_export_batch_size=n + 1,
        schedule_delay_millis=3_600_000,
    )


def parked_llm(n: int, sink: NullSink | None = None) -> LLMSpanProcessor:
    return LLMSpanProcessor(sink or NullSink(), queue_max=n + 1, batch_max=n + 1, interval_s=3600)


def time_on_end(make: Callable[[int], Any], spans: list[ReadableSpan]) -> tuple[float, float]:
    """(ns per on_end, ns per span including the worker's drain)."""
    proc = make(len(spans))
    on_end = proc.on_end
    t0 = time.perf_counter_ns()
    for s in spans:
        on_end(s)
    t1 = time.perf_counter_ns()
    assert proc.force_flush(600_000), "force_flush timed out"
    t2 = time.perf_counter_ns()
    proc.shutdown()
    if isinstance(proc, LLMSpanProcessor):
        assert proc.dropped == 0, f"{proc.dropped} spans dropped"
    return (t1 - t0) / len(spans), (t2 - t0) / len(spans)


def run(n: int, rounds: int) -> list[dict[str, Any]]:
    results = []
    for label, share in (("all LLM spans", 1.0), ("10% LLM spans", 0.1), ("no LLM spans", 0.0)):
        spans = make_spans(n, share)
        bsp, llm, bsp_total, llm_total = [], [], [], []
        for _ in range(rounds):  # alternate so machine noise hits both alike
            a, a_total = time_on_end(parked_bsp, spans)
            sink = NullSink()
            b, b_total = time_on_end(lambda k: parked_llm(k, sink), spans)  # noqa: B023
            # every LLM span became a row: the drain figure covers the whole mapping
            assert sink.n == sum(s.name == "llm_request" for s in spans), sink.n
            bsp.append(a)
            llm.append(b)
            bsp_total.append(a_total)
            llm_total.append(b_total)
        results.append(
            {
                "mix": label,
                "bsp_ns": statistics.median(bsp),
                "llm_ns": statistics.median(llm),
                "ratio": statistics.median(llm) / statistics.median(bsp),
                "bsp_total_ns": statistics.median(bsp_total),
                "llm_total_ns": statistics.median(llm_total),
            }
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    print(
        f"python {sys.version.split()[0]}, {args.spans} spans x {args.rounds} rounds, "
        "median per span"
    )
    print(
        f"{'mix':<16} {'BSP on_end':>11} {'LLM on_end':>11} {'ratio':>6} "
        f"{'BSP +drain':>11} {'LLM +drain':>11}"
    )
    for r in run(args.spans, args.rounds):
        print(
            f"{r['mix']:<16} {r['bsp_ns']:>9.0f}ns {r['llm_ns']:>9.0f}ns {r['ratio']:>6.2f} "
            f"{r['bsp_total_ns']:>9.0f}ns {r['llm_total_ns']:>9.0f}ns"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
