"""Replica span export across a receiver outage, with the real OTLP/HTTP exporter."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request, Response
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from controlplane.sim.span_export import BufferingExporter
from controlplane.sim.supervisor import ThreadServer


class Receiver:
    """An OTLP/HTTP trace endpoint that can be down (503) or up."""

    def __init__(self) -> None:
        self.up = False
        self.names: list[str] = []
        self.refused = 0
        app = FastAPI()

        @app.post("/v1/traces")
        async def traces(request: Request) -> Response:
            if not self.up:
                self.refused += 1
                return Response(status_code=503)
            msg = ExportTraceServiceRequest()
            msg.ParseFromString(await request.body())
            for rs in msg.resource_spans:
                for ss in rs.scope_spans:
                    self.names += [s.name for s in ss.spans]
            return Response(b"", media_type="application/x-protobuf")

        self.app = app


@pytest.fixture(autouse=True)
def _quiet_exporter_logs(caplog):
    caplog.set_level("CRITICAL", logger="opentelemetry")


def test_spans_finished_during_an_outage_are_delivered_in_order_when_it_ends():
    receiver = Receiver()
    with ThreadServer(receiver.app) as server:
        otlp = OTLPSpanExporter(endpoint=server.url + "/v1/traces", timeout=1)
        exporter = BufferingExporter(otlp)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        for i in range(3):
            tracer.start_span(f"during-{i}").end()
        assert receiver.refused >= 3 and receiver.names == []
        assert exporter.pending == 3
        receiver.up = True
        tracer.start_span("after").end()
        assert receiver.names == ["during-0", "during-1", "during-2", "after"]
        assert exporter.pending == 0 and exporter.dropped == 0
        provider.shutdown()


class Flaky:
    """An in-memory exporter that fails while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.got: list[str] = []

    def export(self, spans):
        if self.down:
            return SpanExportResult.FAILURE
        self.got += [s.name for s in spans]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def spans(provider: TracerProvider, *names: str):
    out = []
    for name in names:
        s = provider.get_tracer("t").start_span(name)
        s.end()
        out.append(s)
    return out


def test_the_backlog_is_bounded_and_drops_the_oldest():
    inner = Flaky()
    exporter = BufferingExporter(inner, max_spans=3)
    p = TracerProvider()
    for name in ("a", "b", "c", "d", "e"):
        exporter.export(spans(p, name))
    assert (exporter.pending, exporter.dropped) == (3, 2)
    inner.down = False
    assert exporter.force_flush()
    assert inner.got == ["c", "d", "e"]


def test_a_batch_refused_too_often_is_dropped_and_unblocks_the_rest():
    inner = Flaky()
    exporter = BufferingExporter(inner, max_attempts=2)
    p = TracerProvider()
    exporter.export(spans(p, "poison"))  # attempt 1
    exporter.export(spans(p, "next"))  # poison attempt 2: dropped; next attempt 1
    assert exporter.dropped == 1 and exporter.pending == 1
    inner.down = False
    exporter.export([])
    assert inner.got == ["next"]
