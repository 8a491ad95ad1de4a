"""Whatever arrives on /v1/traces, decode and mapping raise only the collector's own errors.

A third-party exception leaking out of ``decode`` or ``map_span`` would become a 500 (or
kill a worker) instead of a 400 naming the problem; these properties catch that.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from collector.errors import OtlpDecodeError, SpanMappingError
from collector.genai import map_span
from collector.otlp import JSON, PROTOBUF, TraceBatch, decode

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_body() -> bytes:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "chat-8b"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    span = tp.get_tracer("t").start_span(
        "llm_request",
        kind=SpanKind.SERVER,
        attributes={
            "gen_ai.usage.prompt_tokens": 12,
            "gen_ai.latency.e2e": 1.5,
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.response.model": "m",
        },
    )
    span.end()
    tp.shutdown()
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


VALID = _valid_body()


def decode_and_map(body: bytes, ctype: str) -> None:
    try:
        batch = decode(body, ctype)
    except OtlpDecodeError:
        return
    assert isinstance(batch, TraceBatch)
    for view in batch.spans:
        try:
            map_span(view)
        except SpanMappingError:
            pass


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(VALID)),
)
def test_mutated_protobuf_raises_only_collector_errors(flips, cut):
    body = bytearray(VALID)
    for pos, byte in flips:
        body[pos] = byte
    decode_and_map(bytes(body[:cut]), PROTOBUF)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_raise_only_collector_errors(body):
    decode_and_map(body, PROTOBUF)
    decode_and_map(body, JSON)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
ANY_VALUE = st.fixed_dictionaries(
    {},
    optional={
        "stringValue": JSON_VALUES,
        "intValue": JSON_VALUES,
        "doubleValue": JSON_VALUES,
        "boolValue": JSON_VALUES,
        "arrayValue": JSON_VALUES,
        "kvlistValue": JSON_VALUES,
        "bytesValue": JSON_VALUES,
    },
)
SPAN = st.fixed_dictionaries(
    {"name": st.sampled_from(["llm_request", "chat m", 3])},
    optional={
        "traceId": JSON_VALUES | st.just("0af7651916cd43dd8448eb211c80319c"),
        "spanId": JSON_VALUES,
        "kind": JSON_VALUES,
        "status": JSON_VALUES,
        "startTimeUnixNano": JSON_VALUES | st.integers(0, 2**64).map(str),
        "endTimeUnixNano": JSON_VALUES,
        "attributes": st.lists(
            st.fixed_dictionaries(
                {
                    "key": st.sampled_from(
                        [
                            "gen_ai.operation.name",
                            "gen_ai.usage.input_tokens",
                            "gen_ai.latency.e2e",
                            "error.type",
                            "service.name",
                        ]
                    )
                },
                optional={"value": ANY_VALUE | JSON_VALUES},
            ),
            max_size=5,
        ),
    },
)


@FUZZ
@given(st.lists(SPAN, max_size=3), JSON_VALUES)
def test_structurally_wrong_otlp_json_raises_only_collector_errors(spans, resource):
    doc = {
        "resourceSpans": [{"resource": {"attributes": resource}, "scopeSpans": [{"spans": spans}]}]
    }
    decode_and_map(json.dumps(doc).encode(), JSON)


def test_deeply_nested_json_is_a_decode_error_not_a_crash():
    deep = '{"resourceSpans": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(OtlpDecodeError, match="nested too deeply"):
        decode(deep.encode(), JSON)
