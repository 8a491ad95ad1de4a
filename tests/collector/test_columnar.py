"""The columnar OTLP path (C decoder + vectorized mapping) against the reference path.

The reference is what the receiver did before: ``decode_protobuf`` + ``map_span`` per span
+ the trace-id policy, rows converted by the store's own ``to_arrow``. For every body both
must give the same ``IngestResult`` (counts and partial-success message) and the same
Arrow table; a body the C decoder refuses must be one upb refuses or one it hands back.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from collector import columnar
from collector.errors import OtlpDecodeError
from collector.exemplars import TraceIdPolicy
from collector.genai import AttributeMapping, wanted_keys
from collector.otlp import PROTOBUF, decode_protobuf
from collector.pricing import ModelPrice, PoolPrice, Pricer
from collector.records import RequestRecord, as_row, columns
from controlplane.ingest import IngestResult, OtlpIngest
from controlplane.store.columns import to_arrow
from controlplane.store.migrations import m0001_initial
from tests.support.otlp_bodies import body_of

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def requests_types() -> dict[str, str]:
    """Column types of ``requests``, read from the migration that creates it."""
    sql = next(s for s in m0001_initial.STATEMENTS if "EXISTS requests (" in s)
    body = sql.split("(", 1)[1].rsplit(") ENGINE", 1)[0]
    types = {}
    for line in body.strip().splitlines():
        name, rest = line.strip().rstrip(",").split(" ", 1)
        types[name] = re.split(r" CODEC\(", rest)[0]
    return types


TYPES = requests_types()


class ArrowSink:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []

    def emit(self, records: Sequence[Any]) -> None:
        raise AssertionError("the columnar path emits Arrow")

    def emit_arrow(self, table: str, data: pa.Table) -> None:
        assert table == "requests"
        self.tables.append(data)


class RecordSink:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def emit(self, records: Sequence[Any]) -> None:
        self.records.extend(records)


def both(body: bytes, **kw: Any) -> tuple[Any, Any, pa.Table | None, pa.Table | None]:
    """(fast result, reference result, fast table, reference table); results may be errors."""
    fast_sink, ref_sink = ArrowSink(), RecordSink()
    fast = OtlpIngest(fast_sink, **kw)
    ref = OtlpIngest(ref_sink, **kw)
    assert fast.columnar and not ref.columnar

    def run(ing: OtlpIngest) -> Any:
        try:
            return ing.handle(body, PROTOBUF, None)
        except OtlpDecodeError as exc:
            return ("error", str(exc))

    r_fast, r_ref = run(fast), run(ref)
    t_fast = pa.concat_tables(fast_sink.tables) if fast_sink.tables else None
    t_ref = None
    # Rows the store cannot hold (a cost past Decimal64(9)) fail the reference's insert
    # and are dead-lettered by the writer; the fast path leaves them out of its table.
    stored = [r for r in ref_sink.records if r.cost_usd < 1e9]
    if stored:
        rows = [as_row(r) for r in stored]
        t_ref = to_arrow(columns(RequestRecord), rows, TYPES)
    return r_fast, r_ref, t_fast, t_ref


def assert_same(body: bytes, **kw: Any) -> Any:
    r_fast, r_ref, t_fast, t_ref = both(body, **kw)
    assert r_fast == r_ref
    if t_ref is None:
        assert t_fast is None or t_fast.num_rows == 0
    else:
        assert t_fast is not None
        assert t_fast.schema.equals(t_ref.schema)
        for name in t_ref.column_names:
            assert t_fast[name].equals(t_ref[name]), (name, t_fast[name], t_ref[name])
    return r_fast


# --- the extension --------------------------------------------------------------------------


def test_the_extension_is_built_so_the_receiver_takes_the_fast_path():
    # CI installs with `pip install -e .`, which compiles it; a missing compiler shows here.
    assert columnar.AVAILABLE
    assert OtlpIngest(ArrowSink()).columnar


def test_the_record_layouts_match_the_extension():
    assert columnar.SPAN_DTYPE.itemsize == columnar._otlpcols.SPAN_SIZE
    assert columnar.ATTR_DTYPE.itemsize == columnar._otlpcols.ATTR_SIZE
    assert columnar.OUT_DTYPE.itemsize == columnar._otlpcols.OUT_SIZE


# Wire types the C decoder expects for each field of the OTLP trace schema: protobuf
# type numbers from descriptor.proto (9 string, 11 message, 12 bytes, 13 uint32, 5 int32,
# 3 int64, 8 bool, 1 double, 6 fixed64, 7 fixed32, 14 enum).
SCHEMA = {
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest": {1: 11},
    "opentelemetry.proto.trace.v1.ResourceSpans": {1: 11, 2: 11, 3: 9},
    "opentelemetry.proto.resource.v1.Resource": {1: 11, 2: 13, 3: 11},
    "opentelemetry.proto.common.v1.EntityRef": {1: 9, 2: 9, 3: 9, 4: 9},
    "opentelemetry.proto.common.v1.KeyValue": {1: 9, 2: 11, 3: 5},
    "opentelemetry.proto.common.v1.AnyValue": {1: 9, 2: 8, 3: 3, 4: 1, 5: 11, 6: 11, 7: 12, 8: 5},
    "opentelemetry.proto.common.v1.ArrayValue": {1: 11},
    "opentelemetry.proto.common.v1.KeyValueList": {1: 11},
    "opentelemetry.proto.trace.v1.ScopeSpans": {1: 11, 2: 11, 3: 9},
    "opentelemetry.proto.common.v1.InstrumentationScope": {1: 9, 2: 9, 3: 11, 4: 13},
    "opentelemetry.proto.trace.v1.Span": {
        1: 12, 2: 12, 3: 9, 4: 12, 5: 9, 6: 14, 7: 6, 8: 6, 9: 11, 10: 13, 11: 11, 12: 13,
        13: 11, 14: 13, 15: 11, 16: 7,
    },
    "opentelemetry.proto.trace.v1.Span.Event": {1: 6, 2: 9, 3: 11, 4: 13},
    "opentelemetry.proto.trace.v1.Span.Link": {1: 12, 2: 12, 3: 9, 4: 11, 5: 13, 6: 7},
    "opentelemetry.proto.trace.v1.Status": {2: 9, 3: 14},
}  # fmt: skip


def test_the_c_decoder_knows_every_field_of_the_installed_otlp_schema():
    # A new field in opentelemetry-proto (a string the C code would not UTF-8-check, a
    # oneof member it would not see) must fail here, not silently diverge from upb.
    seen: dict[str, dict[int, int]] = {}

    def walk(d: Any) -> None:
        if d.full_name in seen:
            return
        seen[d.full_name] = {f.number: f.type for f in d.fields}
        for f in d.fields:
            if f.message_type is not None:
                walk(f.message_type)

    walk(ExportTraceServiceRequest.DESCRIPTOR)
    assert seen == SCHEMA


# --- realistic payloads ---------------------------------------------------------------------


def sdk_body(spans: list[tuple[str, SpanKind, dict[str, Any]]], resource: dict[str, Any]) -> bytes:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create(resource))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("t")
    for name, kind, attrs in spans:
        tracer.start_span(name, kind=kind, attributes=attrs).end()
    tp.shutdown()
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


VLLM = {
    "gen_ai.response.model": "meta-llama/Llama-3.1-8B-Instruct", "gen_ai.request.id": "cmpl-1",
    "gen_ai.usage.prompt_tokens": 800, "gen_ai.usage.completion_tokens": 120,
    "gen_ai.latency.time_in_queue": 0.01, "gen_ai.latency.time_to_first_token": 0.2,
    "gen_ai.latency.e2e": 4.2, "gen_ai.latency.time_in_model_prefill": 0.19,
    "gen_ai.latency.time_in_model_decode": 4.0, "gen_ai.request.temperature": 0.7,
}  # fmt: skip
CLIENT = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 50,
    "gen_ai.usage.output_tokens": 9, "gen_ai.usage.cache_read.input_tokens": 20,
    "gen_ai.response.time_to_first_chunk": 0.3, "gen_ai.response.finish_reasons": ["stop"],
    "gen_ai.prompt": "not read", "tenant.id": "acme", "priority": "high",
}  # fmt: skip
DEPRECATED = {
    "gen_ai.system": "vllm", "gen_ai.request.model": "chat-8b",
    "gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": 1,
    "error.type": "timeout",
}  # fmt: skip
PRICER = Pricer(
    [ModelPrice("gpt-4o*", 2.5, 10.0, 1.25), ModelPrice("claude-.*", 3, 15, regex=True)],
    [PoolPrice("chat-8b", 2.49, 2)],
    concurrency=lambda pool, replica: 4.0 if replica.endswith("0") else None,
)


def mixed_body() -> bytes:
    return sdk_body(
        [
            ("llm_request", SpanKind.SERVER, VLLM),
            ("chat gpt-4o-mini", SpanKind.CLIENT, CLIENT),
            ("chat chat-8b", SpanKind.INTERNAL, DEPRECATED),
            ("GET /health", SpanKind.SERVER, {"http.route": "/health"}),
            ("execute_tool x", SpanKind.INTERNAL, {"gen_ai.operation.name": "execute_tool"}),
            ("llm_request", SpanKind.SERVER, {**VLLM, "gen_ai.usage.prompt_tokens": -3}),
            ("llm_request", SpanKind.SERVER, {**VLLM, "gen_ai.latency.e2e": "4.5"}),
        ],
        {"service.name": "chat-8b", "service.instance.id": "chat-8b-0"},
    )


@pytest.mark.parametrize("pricer", [None, PRICER])
@pytest.mark.parametrize("mode", ["all", "exemplars", "none"])
def test_sdk_exported_spans_of_every_shape_give_the_reference_rows(pricer, mode):
    result = assert_same(
        mixed_body(), pricer=pricer, trace_ids=TraceIdPolicy(mode, sample_ratio=0.5)
    )
    assert isinstance(result, IngestResult)
    assert (result.spans, result.accepted, result.rejected) == (7, 4, 1)  # "4.5" parses
    assert "gen_ai.usage.prompt_tokens: must not be negative" in result.message


def test_usual_spans_are_all_mapped_by_the_vectorized_code():
    body = sdk_body(
        [("llm_request", SpanKind.SERVER, VLLM), ("chat", SpanKind.CLIENT, CLIENT)] * 20,
        {"service.name": "chat-8b"},
    )
    out = columnar.ColumnarMapper(pricer=PRICER).map(body)
    assert out is not None and out.reference_spans == 0 and out.table.num_rows == 40


def test_mapping_options_are_honoured_like_the_reference():
    mapping = AttributeMapping(
        pool_keys=("governor.pool",),
        pool_by_model={"gpt-4o-mini": "api-pool"},
        default_pool="fallback",
        keep_attributes=("gen_ai.request.id", "span.kind", "gen_ai.response.finish_reasons"),
        span_kinds=("server", "client"),
    )
    assert_same(mixed_body(), mapping=mapping, pricer=PRICER)


def test_boundary_values_give_the_reference_rows():
    # Equalities and limits where a rule changes: E2E == TTFT (TPOT is 0, not absent),
    # a zero decode time (no tokens/s), one output token, counts at and past UInt32,
    # integral doubles as counts, cached tokens above the input, durations at the
    # fast path's 1e9 s limit and a UInt32-saturating one.
    edges = [
        {**VLLM, "gen_ai.latency.e2e": 0.2, "gen_ai.latency.time_to_first_token": 0.2},
        {**VLLM, "gen_ai.latency.time_in_model_decode": 0.0},
        {**VLLM, "gen_ai.usage.completion_tokens": 1},
        {**VLLM, "gen_ai.usage.completion_tokens": 2**32 - 1},
        {**VLLM, "gen_ai.usage.completion_tokens": 2**40},
        {**VLLM, "gen_ai.usage.prompt_tokens": 800.0, "gen_ai.usage.completion_tokens": 1e12},
        {**CLIENT, "gen_ai.usage.cache_read.input_tokens": 70},
        {**CLIENT, "gen_ai.usage.input_tokens": 0, "gen_ai.usage.cache_read.input_tokens": 5},
        {**VLLM, "gen_ai.latency.e2e": 1e9},
        {**VLLM, "gen_ai.latency.e2e": 5000.0},
    ]
    body = sdk_body(
        [("llm_request", SpanKind.SERVER, attrs) for attrs in edges],
        {"service.name": "chat-8b", "service.instance.id": "chat-8b-0"},
    )
    result = assert_same(body, pricer=PRICER)
    assert result.accepted == len(edges)
    out = columnar.ColumnarMapper(pricer=PRICER).map(body)
    assert out is not None and out.reference_spans == 0


def test_kept_attributes_follow_map_spans_order_and_text_rules():
    # A span's own "span.kind" attribute holds the kind at the kept key's position (and no
    # second "span.kind" entry follows); a kept array of strings is kept joined.
    mapping = AttributeMapping(
        keep_attributes=("span.kind", "gen_ai.response.finish_reasons", "gen_ai.request.id")
    )
    body = sdk_body(
        [
            ("llm_request", SpanKind.SERVER, {**VLLM, "span.kind": "custom"}),
            ("chat", SpanKind.CLIENT, {**CLIENT, "gen_ai.response.finish_reasons": ["a", "b"]}),
            ("llm_request", SpanKind.SERVER, VLLM),
        ],
        {"service.name": "chat-8b"},
    )
    result = assert_same(body, mapping=mapping)
    assert result.accepted == 3
    out = columnar.ColumnarMapper(mapping=mapping).map(body)
    assert out is not None and out.reference_spans == 0
    rows = [dict(r) for r in out.table.column("attributes").to_pylist()]
    assert [list(r) for r in rows] == [
        ["span.kind", "gen_ai.request.id"],
        ["gen_ai.response.finish_reasons", "span.kind"],
        ["gen_ai.request.id", "span.kind"],
    ]
    assert rows[0]["span.kind"] == "server" and rows[1]["span.kind"] == "client"
    assert "a" in rows[1]["gen_ai.response.finish_reasons"]
    assert "b" in rows[1]["gen_ai.response.finish_reasons"]


def test_unknown_service_names_are_not_pools():
    body = sdk_body(
        [("llm_request", SpanKind.SERVER, VLLM)], {"service.name": "unknown_service:py"}
    )
    result = assert_same(body, mapping=AttributeMapping(default_pool="dflt"))
    assert result.accepted == 1


def test_an_operation_name_of_another_type_is_a_request_on_both_paths():
    span = {"name": "chat m", "kind": 3, "trace_id": b"\1" * 16, "span_id": b"\2" * 8,
            "start": 1_750_000_000_000_000_000, "end": 1_750_000_001_000_000_000,
            "status": 0, "message": ""}  # fmt: skip
    for op in (["chat"], {"k": "v"}, 7):
        attrs = [("gen_ai.operation.name", op), ("gen_ai.usage.input_tokens", 3)]
        body = body_of([([("service.name", "p")], [span | {"attrs": attrs}])])
        assert assert_same(body).accepted == 1, op


# --- generated spans ------------------------------------------------------------------------

NUMERIC_KEYS = [
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens", "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token",
    "gen_ai.latency.time_to_first_token", "gen_ai.latency.e2e", "gen_ai.latency.time_in_queue",
    "gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode",
    "gen_ai.usage.cost",
]  # fmt: skip
TEXT_KEYS = [
    "gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model",
    "gen_ai.response.model", "error.type", "gen_ai.response.finish_reasons", "service.name",
    "governor.pool", "k8s.deployment.name", "service.instance.id", "governor.tenant",
    "priority", "gen_ai.request.id", "host.name", "unrelated.key",
]  # fmt: skip

usual_number = st.one_of(
    st.integers(0, 5000), st.floats(0, 120, allow_nan=False), st.sampled_from([0, 1, 2, 0.0])
)
odd_number = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["12", "0.5", "abc", "", True, False, [1, 2], ["x"], None, b"\x01"]),
)  # fmt: skip
usual_text = st.sampled_from(
    ["", "chat", "execute_tool", "chat-8b", "gpt-4o-mini", "claude-3", "m", "acme", "pod-0",
     "unknown_service", "unknown_service:java", "stop", "timeout", "é中"]
)  # fmt: skip
odd_text = st.one_of(
    st.lists(usual_text, max_size=3), st.integers(-5, 5), st.booleans(), st.floats(),
    st.sampled_from([None, b"raw", {"k": "v"}, [1, "a"], [[]]]),
)  # fmt: skip


def attrs(usual: bool) -> st.SearchStrategy[list[tuple[str, Any]]]:
    num = usual_number if usual else st.one_of(usual_number, usual_number, odd_number)
    txt = usual_text if usual else st.one_of(usual_text, usual_text, odd_text)
    pair = st.one_of(
        st.tuples(st.sampled_from(NUMERIC_KEYS), num), st.tuples(st.sampled_from(TEXT_KEYS), txt)
    )
    return st.lists(pair, max_size=10)


TIMES = st.one_of(
    st.integers(1_700_000_000_000_000_000, 1_800_000_000_000_000_000),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1]),
)


@st.composite
def spans(draw: Any, usual: bool) -> dict[str, Any]:
    return {
        "name": draw(st.sampled_from(["llm_request", "chat m", "GET /"])),
        "kind": draw(st.integers(0, 5)),
        "status": draw(st.integers(0, 2)),
        "message": draw(st.sampled_from(["", "boom"])),
        "trace_id": draw(st.one_of(st.just(b""), st.binary(min_size=16, max_size=16))),
        "span_id": draw(st.one_of(st.just(b""), st.binary(min_size=8, max_size=8))),
        "start": draw(TIMES),
        "end": draw(TIMES),
        "attrs": draw(attrs(usual)),
    }


def bodies(usual: bool) -> st.SearchStrategy[bytes]:
    resource = st.lists(
        st.tuples(st.sampled_from(TEXT_KEYS), usual_text if usual else odd_text | usual_text),
        max_size=4,
    )
    return st.lists(st.tuples(resource, st.lists(spans(usual), max_size=6)), max_size=3).map(
        body_of
    )


MAPPINGS = st.sampled_from([
    AttributeMapping(),
    AttributeMapping(pool_by_model={"gpt-4o-mini": "api", "m": "small"}, default_pool="dflt",
                     span_kinds=("server",),
                     keep_attributes=("gen_ai.request.id", "error.type", "span.kind",
                                      "gen_ai.response.finish_reasons", "gen_ai.request.id")),
])  # fmt: skip
PRICERS = st.sampled_from([None, PRICER, Pricer([ModelPrice("*", 1.0, 2.0)])])
POLICIES = st.sampled_from([
    None, TraceIdPolicy("exemplars", sample_ratio=0.3, slow_ttft_us=500_000),
    TraceIdPolicy("none"),
])  # fmt: skip


@FUZZ
@given(bodies(usual=True), MAPPINGS, PRICERS, POLICIES)
def test_generated_usual_spans_give_the_reference_rows(body, mapping, pricer, policy):
    assert_same(body, mapping=mapping, pricer=pricer, trace_ids=policy)


@FUZZ
@given(bodies(usual=False), MAPPINGS, PRICERS, POLICIES)
def test_generated_unusual_spans_give_the_reference_rows_and_errors(body, mapping, pricer, policy):
    assert_same(body, mapping=mapping, pricer=pricer, trace_ids=policy)


# --- hostile bytes --------------------------------------------------------------------------

VALID = mixed_body()
KEYS = tuple(sorted(wanted_keys()))
MARKERS = tuple(
    KEYS.index(k) for k in ("gen_ai.operation.name", "gen_ai.system", "gen_ai.latency.e2e")
)


def c_verdict(body: bytes) -> None:
    """The C decoder never crashes; what it accepts, upb accepts with the same candidates."""
    from collector import _otlpcols

    out = _otlpcols.decode(body, KEYS, MARKERS, "llm_request")
    try:
        ExportTraceServiceRequest.FromString(body)
        upb_ok = True
    except DecodeError:
        upb_ok = False
    if out is None:
        return
    assert upb_ok, "the C decoder accepted a body upb refuses"
    try:
        views = decode_protobuf(body, frozenset(KEYS)).spans
    except OtlpDecodeError:
        raise AssertionError("the C decoder accepted spans the reference rejects") from None
    assert out[1] == len(views)
    assert_same(body, pricer=PRICER)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(body):
    c_verdict(body)


@FUZZ
@given(st.integers(0, len(VALID)))
def test_truncated_bodies_are_refused_like_upb_refuses_them(cut):
    c_verdict(VALID[:cut])


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6)
)
def test_mutated_bodies_never_crash_and_agree_with_upb(flips):
    body = bytearray(VALID)
    for pos, byte in flips:
        body[pos] = byte
    c_verdict(bytes(body))


def test_invalid_utf8_and_overlong_varints_go_to_the_reference_path():
    req = ExportTraceServiceRequest.FromString(VALID)
    good = req.SerializeToString()
    bad_utf8 = good.replace(b"chat-8b-0", b"chat-8b-\xff")
    assert bad_utf8 != good
    c_verdict(bad_utf8)
    with pytest.raises(OtlpDecodeError):
        OtlpIngest(ArrowSink()).handle(bad_utf8, PROTOBUF, None)
    # A varint longer than 64 bits, and a length running past the end.
    c_verdict(b"\x0a" + b"\xff" * 10 + b"\x01")
    c_verdict(b"\x0a\x7f" + b"\x00" * 10)
    c_verdict(b"\x0a\x02\x0a\x00" + struct.pack("<I", 0xFFFFFFFF))


def test_deeply_nested_values_are_refused_without_recursing_without_bound():
    value = b"\x0a\x01x"  # AnyValue{string_value: "x"}
    for _ in range(200):  # AnyValue{array_value: ArrayValue{values: [value]}}
        array = b"\x0a" + _varint(len(value)) + value
        value = b"\x2a" + _varint(len(array)) + array
    kv = b"\x0a\x12gen_ai.latency.e2e\x12" + _varint(len(value)) + value
    span = b"\x2a\x0bllm_request" + b"\x4a" + _varint(len(kv)) + kv
    ss = b"\x12" + _varint(len(span)) + span
    rs = b"\x12" + _varint(len(ss)) + ss
    body = b"\x0a" + _varint(len(rs)) + rs
    c_verdict(body)
    with pytest.raises(OtlpDecodeError):  # upb's depth limit, reported as a decode error
        OtlpIngest(ArrowSink()).handle(body, PROTOBUF, None)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_finite_checks_match_python_for_doubles():
    # NaN and infinities are unusual values: the reference rejects them, with its message.
    body = sdk_body(
        [("llm_request", SpanKind.SERVER, {**VLLM, "gen_ai.latency.e2e": math.inf})],
        {"service.name": "chat-8b"},
    )
    result = assert_same(body)
    assert result.rejected == 1 and "finite" in result.message


def test_a_failure_in_the_fast_path_costs_speed_not_the_request(monkeypatch, caplog):
    def broken(self: Any, raw: bytes) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(columnar.ColumnarMapper, "map", broken)
    sink = RecordSink()
    sink.emit_arrow = lambda table, data: None  # type: ignore[attr-defined]
    ingest = OtlpIngest(sink, pricer=PRICER)
    assert ingest.columnar
    result = ingest.handle(mixed_body(), PROTOBUF, None)
    assert (result.accepted, result.rejected) == (4, 1) and len(sink.records) == 4
    assert "columnar path failed" in caplog.text


def test_a_mapping_reading_more_keys_than_the_decoder_takes_uses_the_per_span_path():
    many = tuple(f"custom.key.{i}" for i in range(300))
    ingest = OtlpIngest(ArrowSink(), mapping=AttributeMapping(keep_attributes=many))
    assert not ingest.columnar
