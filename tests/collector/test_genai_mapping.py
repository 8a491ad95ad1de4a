"""collector.genai: every producer shape maps to the request row a user would expect."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from collector.errors import SpanMappingError
from collector.genai import AttributeMapping, SpanView, is_llm_span, map_span
from collector.records import RequestRecord

T0 = 1_763_700_000_000_000_000  # ns
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def view(
    name: str = "chat llama",
    attrs: dict[str, Any] | None = None,
    resource: dict[str, Any] | None = None,
    duration_s: float = 2.0,
    **kw: Any,
) -> SpanView:
    return SpanView(
        name=name,
        attributes=attrs or {},
        resource=resource or {},
        start_ns=T0,
        end_ns=T0 + int(duration_s * 1e9),
        trace_id=TRACE,
        span_id=SPAN,
        **kw,
    )


# vLLM 0.6-0.11 llm_request span, attribute names from vllm/tracing.py SpanAttributes.
VLLM_ATTRS = {
    "gen_ai.response.model": "meta-llama/Llama-3.1-8B-Instruct",
    "gen_ai.request.id": "cmpl-7f3a",
    "gen_ai.request.max_tokens": 256,
    "gen_ai.request.temperature": 0.7,
    "gen_ai.usage.prompt_tokens": 812,
    "gen_ai.usage.completion_tokens": 201,
    "gen_ai.latency.time_in_queue": 0.05,
    "gen_ai.latency.time_to_first_token": 0.25,
    "gen_ai.latency.e2e": 4.25,
    "gen_ai.latency.time_in_model_prefill": 0.2,
    "gen_ai.latency.time_in_model_decode": 4.0,
    "gen_ai.latency.time_in_model_inference": 4.2,
}

CASES: list[tuple[str, SpanView, AttributeMapping | None, dict[str, Any]]] = [
    (
        "a vLLM llm_request span yields every latency from gen_ai.latency attributes",
        view(
            "llm_request",
            VLLM_ATTRS,
            {"service.name": "chat-8b", "service.instance.id": "chat-8b-0"},
            duration_s=4.3,
            kind="server",
        ),
        None,
        dict(
            pool="chat-8b",
            replica="chat-8b-0",
            model="meta-llama/Llama-3.1-8B-Instruct",
            ttft_us=250_000,
            e2e_us=4_250_000,
            queue_us=50_000,
            prefill_us=200_000,
            decode_us=4_000_000,
            tpot_us=20_000,
            input_tokens=812,
            output_tokens=201,
            output_tokens_per_s=50.0,
            status="ok",
            finish_reason="",
        ),
    ),
    (
        "a vLLM span without a model or service name falls back to the configured default pool",
        view(
            "llm_request",
            {k: v for k, v in VLLM_ATTRS.items() if k != "gen_ai.response.model"},
            {"service.name": "unknown_service"},
            kind="server",
        ),
        AttributeMapping(default_pool="fallback"),
        dict(pool="fallback", model="", ttft_us=250_000),
    ),
    (
        "a current GenAI client span gets TTFT from time_to_first_chunk and e2e from its duration",
        view(
            "chat gpt-4o",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 101,
                "gen_ai.usage.cache_read.input_tokens": 1024,
                "gen_ai.response.finish_reasons": ("stop",),
                "gen_ai.response.time_to_first_chunk": 0.4,
            },
            {"service.name": "gateway"},
            duration_s=2.4,
            kind="client",
        ),
        None,
        dict(
            pool="gateway",
            model="gpt-4o-2024-08-06",
            ttft_us=400_000,
            e2e_us=2_400_000,
            decode_us=2_000_000,
            tpot_us=20_000,
            output_tokens_per_s=50.0,
            input_tokens=1200,
            output_tokens=101,
            cached_tokens=1024,
            finish_reason="stop",
            queue_us=None,
            prefill_us=None,
        ),
    ),
    (
        "deprecated gen_ai.system and prompt/completion token names are understood",
        view(
            "completion",
            {
                "gen_ai.system": "vllm",
                "gen_ai.request.model": "qwen2.5-7b",
                "gen_ai.usage.prompt_tokens": 30,
                "gen_ai.usage.completion_tokens": 9,
            },
            duration_s=1.5,
        ),
        AttributeMapping(pool_by_model={"qwen2.5-7b": "qwen-pool"}),
        dict(
            pool="qwen-pool",
            model="qwen2.5-7b",
            input_tokens=30,
            output_tokens=9,
            e2e_us=1_500_000,
            ttft_us=None,
            tpot_us=None,
            output_tokens_per_s=None,
        ),
    ),
    (
        "a span with ERROR status and no error.type is an error of type _OTHER",
        view(attrs={"gen_ai.operation.name": "chat"}, status_error=True, status_message="boom"),
        None,
        dict(status="error", error_type="_OTHER"),
    ),
    (
        "error.type alone marks the request failed with that type",
        view(attrs={"gen_ai.operation.name": "chat", "error.type": "timeout"}),
        None,
        dict(status="error", error_type="timeout"),
    ),
    (
        "a single output token has no time per output token nor decode throughput",
        view(
            attrs={
                "gen_ai.operation.name": "chat",
                "gen_ai.usage.output_tokens": 1,
                "gen_ai.response.time_to_first_chunk": 0.3,
            },
            duration_s=0.3,
        ),
        None,
        dict(ttft_us=300_000, tpot_us=None, output_tokens_per_s=None, decode_us=0),
    ),
    (
        "span attributes override resource attributes and tenant, priority, replica are read",
        view(
            attrs={
                "gen_ai.operation.name": "chat",
                "governor.pool": "vip",
                "tenant.id": "acme",
                "governor.priority": "high",
            },
            # the same keys on the resource, with other values: the span's win
            resource={
                "service.name": "gateway",
                "k8s.pod.name": "gw-5d9c-x2",
                "governor.pool": "from-resource",
                "tenant.id": "resource-tenant",
            },
        ),
        None,
        dict(pool="vip", tenant="acme", priority="high", replica="gw-5d9c-x2"),
    ),
    (
        "a duration beyond the UInt32 microsecond range saturates instead of overflowing",
        view(attrs={"gen_ai.operation.name": "chat"}, duration_s=5000.0),
        None,
        dict(e2e_us=2**32 - 1),
    ),
    (
        "gen_ai.usage.cost reported by the producer is kept when no pricer is configured",
        view(attrs={"gen_ai.operation.name": "chat", "gen_ai.usage.cost": 0.0125}),
        None,
        dict(cost_usd=0.0125),
    ),
    (
        "cached tokens never exceed the input tokens they are part of",
        view(
            attrs={
                "gen_ai.operation.name": "chat",
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.cache_read_input_tokens": 50,
            }
        ),
        None,
        dict(input_tokens=10, cached_tokens=10),
    ),
]


@pytest.mark.parametrize(
    ("span", "mapping", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_span_maps_to_expected_row(span, mapping, expected):
    record = map_span(span, mapping)
    assert record is not None
    got = {k: getattr(record, k) for k in expected}
    assert got == expected


def test_row_keeps_identity_time_and_selected_attributes():
    record = map_span(view("llm_request", VLLM_ATTRS, kind="server"))
    assert record == RequestRecord(
        ts=datetime.fromtimestamp(T0 / 1e9, tz=UTC),
        model="meta-llama/Llama-3.1-8B-Instruct",
        trace_id=TRACE,
        span_id=SPAN,
        ttft_us=250_000,
        tpot_us=20_000,
        e2e_us=4_250_000,
        queue_us=50_000,
        prefill_us=200_000,
        decode_us=4_000_000,
        input_tokens=812,
        output_tokens=201,
        output_tokens_per_s=50.0,
        attributes={"gen_ai.request.id": "cmpl-7f3a", "span.kind": "server"},
    )


NOT_LLM = [
    (
        "an HTTP server span is not an LLM request",
        view("GET /v1/models", {"http.request.method": "GET"}),
    ),
    (
        "a tool execution step is not an LLM request",
        view("execute_tool search", {"gen_ai.operation.name": "execute_tool"}),
    ),
    (
        "an agent invocation is not an LLM request",
        view("invoke_agent planner", {"gen_ai.operation.name": "invoke_agent"}),
    ),
]


@pytest.mark.parametrize("span", [c[1] for c in NOT_LLM], ids=[c[0] for c in NOT_LLM])
def test_non_llm_spans_are_ignored(span):
    assert map_span(span) is None


def test_span_kinds_filter_counts_only_the_configured_side():
    server_only = AttributeMapping(span_kinds=("server",))
    client = view(attrs={"gen_ai.operation.name": "chat"}, kind="client")
    server = view("llm_request", VLLM_ATTRS, kind="server")
    assert map_span(client, server_only) is None
    assert map_span(server, server_only) is not None


BAD = [
    (
        "a token count that is not a number names the attribute",
        {"gen_ai.usage.output_tokens": "many"},
        "gen_ai.usage.output_tokens: expected a number",
    ),
    (
        "a negative latency is rejected",
        {"gen_ai.latency.e2e": -1.0},
        "gen_ai.latency.e2e: must not be negative",
    ),
    (
        "a boolean token count is rejected",
        {"gen_ai.usage.input_tokens": True},
        "gen_ai.usage.input_tokens: expected a number, got a boolean",
    ),
    (
        "a fractional token count is rejected",
        {"gen_ai.usage.input_tokens": 2.5},
        "expected a whole number of tokens",
    ),
    (
        "a NaN TTFT is rejected",
        {"gen_ai.response.time_to_first_chunk": float("nan")},
        "expected a finite number",
    ),
]


@pytest.mark.parametrize(("attrs", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_unusable_values_raise_a_mapping_error_naming_the_attribute(attrs, message):
    with pytest.raises(SpanMappingError, match=message):
        map_span(view(attrs={"gen_ai.operation.name": "chat", **attrs}))


@pytest.mark.parametrize(
    "start_ns",
    [0, 2**64 - 1],
    ids=["a span without a start time is rejected", "a start time past 2262 is rejected"],
)
def test_start_times_the_store_cannot_hold_are_rejected(start_ns):
    span = SpanView(
        name="llm_request", attributes={}, resource={}, start_ns=start_ns, end_ns=start_ns
    )
    with pytest.raises(SpanMappingError, match="not a time the store can hold"):
        map_span(span)


def test_numeric_strings_are_accepted_as_numbers():
    record = map_span(
        view(attrs={"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": "42"})
    )
    assert record is not None and record.output_tokens == 42


class PerTokenPricer:
    """Prices like an API table: $ per input and per output token."""

    def request_cost(self, record: RequestRecord) -> float:
        return record.input_tokens * 2.5e-6 + record.output_tokens * 10e-6


def test_pricer_sets_the_cost_of_each_request():
    span = view(
        attrs={
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 100,
            "gen_ai.usage.cost": 99.0,
        }
    )
    record = map_span(span, pricer=PerTokenPricer())
    assert record is not None
    assert record.cost_usd == pytest.approx(0.0035)


def test_cheap_check_looks_only_at_name_and_marker_keys():
    assert is_llm_span("llm_request", {})
    assert is_llm_span("x", {"gen_ai.system": "openai"})
    assert is_llm_span("x", {"gen_ai.latency.e2e": 1.0})
    assert not is_llm_span("x", {"gen_ai.request.model": "m"})
    assert not is_llm_span("x", {"gen_ai.operation.name": "execute_tool"})
    # an operation name of another type names no known operation: a request span
    for op in (["chat"], {"k": "v"}, 7):
        assert is_llm_span("x", {"gen_ai.operation.name": op})


class BrokenPricer:
    def request_cost(self, record: RequestRecord) -> float:
        raise KeyError("no price table")


def test_a_failing_pricer_keeps_the_row_and_says_why_it_has_no_cost():
    record = map_span(view(attrs={"gen_ai.operation.name": "chat"}), pricer=BrokenPricer())
    assert record is not None and record.cost_usd == 0.0
    assert record.attributes["governor.cost_error"] == "KeyError: 'no price table'"
