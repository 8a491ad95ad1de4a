"""collector.otlp: bodies the real OTLP exporter sends, OTLP/JSON, compression, bad input."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from collector.errors import OtlpDecodeError, PayloadTooLarge, UnsupportedContent
from collector.otlp import (
    JSON,
    PROTOBUF,
    decode,
    status_body,
    success_body,
)

T0 = 1_763_700_000_000_000_000


def sdk_spans():
    """Finished spans from the real SDK: a vLLM llm_request, a GenAI chat, and an HTTP span."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider(
        resource=Resource.create({"service.name": "chat-8b", "k8s.pod.name": "chat-8b-7d9f"})
    )
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("vllm.entrypoints")
    span = tracer.start_span(
        "llm_request",
        kind=SpanKind.SERVER,
        start_time=T0,
        attributes={
            "gen_ai.usage.prompt_tokens": 812,
            "gen_ai.usage.completion_tokens": 201,
            "gen_ai.latency.time_to_first_token": 0.25,
            "gen_ai.latency.e2e": 4.25,
            "gen_ai.request.id": "cmpl-1",
        },
    )
    span.end(end_time=T0 + 4_300_000_000)
    span = tracer.start_span(
        "chat gpt-4o",
        kind=SpanKind.CLIENT,
        start_time=T0,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.response.finish_reasons": ["stop", "length"],
            "gen_ai.usage.input_tokens": 10,
            "llm.flag": True,
        },
    )
    span.set_status(Status(StatusCode.ERROR, "rate limited"))
    span.end(end_time=T0 + 1_000_000_000)
    tracer.start_span("GET /v1/models", start_time=T0).end(end_time=T0 + 1000)
    tp.shutdown()
    return exporter.get_finished_spans()


def protobuf_body() -> bytes:
    return encode_spans(sdk_spans()).SerializeToString()


def test_protobuf_from_the_real_exporter_decodes_llm_spans_only():
    spans = sdk_spans()
    batch = decode(encode_spans(spans).SerializeToString(), PROTOBUF)
    assert batch.total == 3
    assert [v.name for v in batch.spans] == ["llm_request", "chat gpt-4o"]
    vllm, chat = batch.spans
    assert vllm.kind == "server" and chat.kind == "client"
    assert vllm.attributes["gen_ai.usage.prompt_tokens"] == 812
    assert vllm.attributes["gen_ai.latency.e2e"] == 4.25
    assert vllm.resource["k8s.pod.name"] == "chat-8b-7d9f"
    assert (vllm.start_ns, vllm.end_ns) == (T0, T0 + 4_300_000_000)
    assert vllm.trace_id == format(spans[0].context.trace_id, "032x")
    assert vllm.span_id == format(spans[0].context.span_id, "016x")
    assert chat.status_error and chat.status_message == "rate limited"
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop", "length"]
    assert chat.attributes["llm.flag"] is True


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("identity", lambda b: b),
    ],
    ids=[
        "a gzip body decodes like the plain one",
        "a deflate body decodes like the plain one",
        "identity encoding is the plain body",
    ],
)
def test_compressed_bodies_decode_like_plain_ones(encoding, compress):
    body = protobuf_body()
    assert decode(compress(body), PROTOBUF, encoding).spans == decode(body, PROTOBUF).spans


def otlp_json(spans=None, resource_attrs=None) -> dict:
    """An OTLP/JSON document as the spec writes it: hex ids, enum ints, int64 as strings."""
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": resource_attrs
                    or [
                        {"key": "service.name", "value": {"stringValue": "chat-8b"}},
                    ]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "vllm"},
                        "spans": spans
                        if spans is not None
                        else [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "name": "llm_request",
                                "kind": 2,
                                "startTimeUnixNano": str(T0),
                                "endTimeUnixNano": str(T0 + 2_000_000_000),
                                "attributes": [
                                    {
                                        "key": "gen_ai.usage.prompt_tokens",
                                        "value": {"intValue": "128"},
                                    },
                                    {
                                        "key": "gen_ai.usage.completion_tokens",
                                        "value": {"intValue": 64},
                                    },
                                    {"key": "gen_ai.latency.e2e", "value": {"doubleValue": 2.0}},
                                    {
                                        "key": "gen_ai.response.finish_reasons",
                                        "value": {
                                            "arrayValue": {"values": [{"stringValue": "stop"}]}
                                        },
                                    },
                                    {"key": "blob", "value": {"bytesValue": "AAEC"}},
                                    {
                                        "key": "meta",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [
                                                    {"key": "a", "value": {"boolValue": True}}
                                                ]
                                            }
                                        },
                                    },
                                ],
                                "status": {"code": 2, "message": "oops"},
                            },
                            {"name": "SELECT", "traceId": "", "spanId": ""},
                        ],
                    }
                ],
            }
        ]
    }


def test_otlp_json_decodes_hex_ids_string_ints_and_nested_values():
    batch = decode(json.dumps(otlp_json()).encode(), "application/json; charset=utf-8")
    assert batch.total == 2
    (v,) = batch.spans
    assert v.trace_id == "5b8efff798038103d269b633813fc60c"
    assert v.span_id == "eee19b7ec3c1b174"
    assert v.kind == "server" and v.status_error and v.status_message == "oops"
    assert v.start_ns == T0 and v.end_ns == T0 + 2_000_000_000
    assert v.attributes == {
        "gen_ai.usage.prompt_tokens": 128,
        "gen_ai.usage.completion_tokens": 64,
        "gen_ai.latency.e2e": 2.0,
        "gen_ai.response.finish_reasons": ["stop"],
        "blob": "000102",
        "meta": {"a": True},
    }
    assert v.resource == {"service.name": "chat-8b"}


def test_protobuf_and_json_of_the_same_spans_give_the_same_views():
    from google.protobuf.json_format import MessageToDict

    msg = encode_spans(sdk_spans())
    doc = MessageToDict(msg)
    # Protobuf's JSON mapping writes ids as base64 (OTLP/JSON requires hex) and enums as
    # names (OTLP/JSON requires integers; the names are accepted too).
    import base64

    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        sp[key] = base64.b64decode(sp[key]).hex()
    from_json = decode(json.dumps(doc).encode(), JSON)
    from_pb = decode(msg.SerializeToString(), PROTOBUF)
    assert from_json.spans == from_pb.spans
    assert from_json.total == from_pb.total == 3


BAD_JSON = [
    ("a body that is not JSON says so", b"{not json", "body is not valid JSON"),
    (
        "resourceSpans that is not an array is named",
        json.dumps({"resourceSpans": {}}).encode(),
        "resourceSpans: expected an array, got dict",
    ),
    (
        "a start time that is not an integer is named with its path",
        json.dumps(otlp_json([{"name": "llm_request", "startTimeUnixNano": "soon"}])).encode(),
        r"resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]\.startTimeUnixNano: expected an integer",
    ),
    (
        "a trace id of the wrong length is named",
        json.dumps(otlp_json([{"name": "llm_request", "traceId": "abcd"}])).encode(),
        r"spans\[0\]\.traceId: expected 32 hex characters, got 'abcd'",
    ),
    (
        "an attribute value of unknown type is named",
        json.dumps(
            otlp_json(
                [{"name": "llm_request", "attributes": [{"key": "k", "value": {"floatValue": 1}}]}]
            )
        ).encode(),
        r"attributes\[0\]\.value: unknown value type floatValue",
    ),
    (
        "a double attribute given as text is refused",
        json.dumps(
            otlp_json(
                [
                    {
                        "name": "llm_request",
                        "attributes": [
                            {"key": "gen_ai.latency.e2e", "value": {"doubleValue": "fast"}}
                        ],
                    }
                ]
            )
        ).encode(),
        r"doubleValue: expected a number, got 'fast'",
    ),
    (
        "an unknown span kind is refused",
        json.dumps(otlp_json([{"name": "llm_request", "kind": 9}])).encode(),
        "unknown span kind 9",
    ),
    ("a top-level array is refused", b"[]", "body: expected an object, got list"),
    (
        "a superscript digit is not an integer",
        json.dumps(otlp_json([{"name": "llm_request", "startTimeUnixNano": "\u00b2"}])).encode(),
        "startTimeUnixNano: expected an integer",
    ),
    (
        "an integer too long for int64 is refused",
        json.dumps(otlp_json([{"name": "llm_request", "startTimeUnixNano": "9" * 5000}])).encode(),
        "startTimeUnixNano: expected an integer",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON]
)
def test_bad_json_is_rejected_with_a_message_saying_what_is_wrong(body, message):
    with pytest.raises(OtlpDecodeError, match=message):
        decode(body, JSON)


def test_truncated_protobuf_is_rejected():
    body = protobuf_body()
    # The request holds one length-delimited resource_spans field, so any cut is detectable.
    for cut in (1, 7, len(body) // 2, len(body) - 1):
        with pytest.raises(OtlpDecodeError, match="not a valid protobuf"):
            decode(body[:cut], PROTOBUF)


def test_random_bytes_are_not_protobuf():
    with pytest.raises(OtlpDecodeError):
        decode(b"\xff\xff\xff\xff\xff\xff", PROTOBUF)


def test_a_wrong_length_protobuf_trace_id_is_named():
    msg = encode_spans(sdk_spans())
    msg.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01\x02"
    with pytest.raises(OtlpDecodeError, match=r"spans\[0\]\.trace_id: expected 16 bytes, got 2"):
        decode(msg.SerializeToString(), PROTOBUF)


def test_truncated_gzip_is_rejected():
    body = gzip.compress(protobuf_body())
    with pytest.raises(OtlpDecodeError, match="truncated"):
        decode(body[: len(body) // 2], PROTOBUF, "gzip")


def test_corrupt_gzip_is_rejected():
    with pytest.raises(OtlpDecodeError, match="not valid gzip"):
        decode(b"\x1f\x8b\x08\x00garbagegarbage", PROTOBUF, "gzip")


def test_a_small_gzip_body_cannot_expand_past_the_limit():
    bomb = gzip.compress(b"\0" * 5_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(PayloadTooLarge, match="limit of 1000000"):
        decode(bomb, PROTOBUF, "gzip", max_bytes=1_000_000)


def test_a_plain_body_over_the_limit_is_too_large():
    with pytest.raises(PayloadTooLarge):
        decode(b"\0" * 2048, PROTOBUF, max_bytes=1024)


@pytest.mark.parametrize(
    ("ctype", "encoding", "message"),
    [
        ("text/plain", None, "unsupported content type 'text/plain'"),
        (None, None, r"unsupported content type '\(none\)'"),
        (PROTOBUF, "br", "unsupported content encoding 'br'"),
    ],
    ids=["text is not OTLP", "a missing content type is refused", "brotli is not supported"],
)
def test_unsupported_content_is_named(ctype, encoding, message):
    with pytest.raises(UnsupportedContent, match=message):
        decode(b"", ctype, encoding)


def test_partial_success_response_parses_as_the_exporter_reads_it():
    resp = ExportTraceServiceResponse.FromString(success_body(PROTOBUF, 2, "2 spans bad"))
    assert resp.partial_success.rejected_spans == 2
    assert resp.partial_success.error_message == "2 spans bad"
    assert not ExportTraceServiceResponse.FromString(success_body(PROTOBUF)).HasField(
        "partial_success"
    )
    assert json.loads(success_body(JSON, 1, "x")) == {
        "partialSuccess": {"rejectedSpans": "1", "errorMessage": "x"}
    }
    assert json.loads(success_body(JSON)) == {}


def test_error_bodies_are_google_rpc_status():
    st = status_pb2.Status.FromString(status_body(PROTOBUF, 3, "bad body"))
    assert (st.code, st.message) == (3, "bad body")
    assert json.loads(status_body(JSON, 3, "bad body")) == {"code": 3, "message": "bad body"}


def test_skipping_unwanted_attributes_changes_no_mapped_value():
    from collector import genai

    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "gw", "k8s.pod.name": "p"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 11,
        "gen_ai.usage.cache_read.input_tokens": 50,
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.response.time_to_first_chunk": 0.1,
        "gen_ai.latency.time_in_queue": 0.01,
        "gen_ai.latency.time_in_model_prefill": 0.05,
        "gen_ai.latency.time_in_model_decode": 0.5,
        "gen_ai.usage.cost": 0.01,
        "error.type": "timeout",
        "tenant.id": "acme",
        "gen_ai.request.id": "r-1",
        "gen_ai.prompt.0.content": "a long prompt " * 50,  # OpenLLMetry-style content
    }
    tp.get_tracer("t").start_span("chat gpt-4o", attributes=attrs).end()
    tp.shutdown()
    body = encode_spans(exporter.get_finished_spans()).SerializeToString()
    (full,) = decode(body, PROTOBUF).spans
    (lean,) = decode(body, PROTOBUF, wanted=genai.wanted_keys()).spans
    assert "gen_ai.prompt.0.content" in full.attributes
    assert "gen_ai.prompt.0.content" not in lean.attributes
    assert genai.map_span(lean) == genai.map_span(full)


def test_every_attribute_name_the_mapping_knows_is_wanted():
    from collector import genai

    names = {v for k, v in vars(genai).items() if k.isupper() and isinstance(v, str) and "." in v}
    assert names <= genai.wanted_keys()
