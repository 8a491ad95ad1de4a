"""Pure mapping: one finished span -> one ``RequestRecord`` (or ``None`` if not an LLM request).

Shapes recognised (all may appear in one fleet):

* OTel GenAI (current): ``gen_ai.operation.name``, ``gen_ai.provider.name``,
  ``gen_ai.usage.input_tokens|output_tokens|cache_read.input_tokens``,
  ``gen_ai.response.finish_reasons``, ``gen_ai.response.time_to_first_chunk`` (s), ``error.type``.
* OTel GenAI (deprecated names many producers still emit): ``gen_ai.system``,
  ``gen_ai.usage.prompt_tokens|completion_tokens``.
* vLLM's ``llm_request`` SERVER span: ``gen_ai.latency.*`` in seconds, ``gen_ai.request.id``.

Derived values (durations are integer microseconds in the record):

* ``e2e``: ``gen_ai.latency.e2e`` if given, else span end - span start.
* ``ttft``: ``gen_ai.latency.time_to_first_token`` | ``gen_ai.response.time_to_first_chunk``
  | ``gen_ai.server.time_to_first_token``.
* ``decode``: ``gen_ai.latency.time_in_model_decode``, else ``e2e - ttft`` (the time from
  the first token to the last one, which is what a streaming client sees).
* ``tpot`` = (e2e - ttft) / (output_tokens - 1) when output_tokens > 1.
* ``output_tokens_per_s`` = (output_tokens - 1) / decode seconds: the tokens generated in
  the decode phase (the first token belongs to prefill) over that phase's duration.
  ``None`` when there is no decode phase to measure (one token, no TTFT, zero decode).

The module is pure: no I/O, no clock, no globals. Rejection of non-LLM spans looks at the
span name and at most three attribute keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from collector.errors import SpanMappingError
from collector.records import RequestRecord

# Attribute names (OTel GenAI semantic conventions and vLLM's tracing.py).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # deprecated -> provider.name
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"  # deprecated -> input_tokens
COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"  # deprecated -> output_tokens
CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
CACHE_READ_OLD = "gen_ai.usage.cache_read_input_tokens"  # pre-1.37 spelling
FINISH_REASONS = "gen_ai.response.finish_reasons"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
SERVER_TTFT = "gen_ai.server.time_to_first_token"  # set as a span attribute by OpenLIT
ERROR_TYPE = "error.type"
USAGE_COST = "gen_ai.usage.cost"  # not standard; OpenLIT and others set it in USD
VLLM_SPAN = "llm_request"
LAT_TTFT = "gen_ai.latency.time_to_first_token"
LAT_E2E = "gen_ai.latency.e2e"
LAT_QUEUE = "gen_ai.latency.time_in_queue"
LAT_PREFILL = "gen_ai.latency.time_in_model_prefill"
LAT_DECODE = "gen_ai.latency.time_in_model_decode"

# Operations that are agent or tool steps, not model inference: never request rows.
NON_INFERENCE_OPERATIONS = frozenset(
    {"execute_tool", "invoke_agent", "create_agent", "invoke_workflow"}
)
# Values OTel SDKs put in service.name when none was configured: not a pool name.
_UNKNOWN_SERVICE = "unknown_service"
_UINT32_MAX = 2**32 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A zero start time means "not set"; the store's DateTime64(6) ends in 2262 for ns inputs.
_MIN_START_NS = 1
_MAX_START_NS = 2**63 - 1

SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")


@dataclass(frozen=True, slots=True)
class SpanView:
    """What the mapping needs from a span, whether it came from the SDK or from OTLP."""

    name: str
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    start_ns: int
    end_ns: int
    kind: str = "unspecified"  # one of SPAN_KINDS
    status_error: bool = False
    status_message: str = ""
    trace_id: str = ""  # 32 lowercase hex chars, "" when unknown
    span_id: str = ""  # 16 lowercase hex chars


@dataclass(frozen=True)
class AttributeMapping:
    """Where pool, replica, model, tenant and priority come from; first key found wins.

    Each key is looked up in the span's attributes, then in its resource attributes.
    """

    pool_keys: tuple[str, ...] = ("governor.pool", "k8s.deployment.name", "service.name")
    replica_keys: tuple[str, ...] = (
        "governor.replica", "service.instance.id", "k8s.pod.name", "host.name",
    )  # fmt: skip
    model_keys: tuple[str, ...] = (RESPONSE_MODEL, REQUEST_MODEL)
    tenant_keys: tuple[str, ...] = ("governor.tenant", "tenant.id", "tenant")
    priority_keys: tuple[str, ...] = ("governor.priority", "priority")
    # Used when no pool key is present: model name -> pool (from the configured pools).
    pool_by_model: Mapping[str, str] = field(default_factory=dict)
    default_pool: str = ""
    # Copied into the record's ``attributes`` map when present (strings only).
    keep_attributes: tuple[str, ...] = (
        "gen_ai.request.id", "gen_ai.response.id", OPERATION, PROVIDER, SYSTEM,
        "server.address",
    )  # fmt: skip
    # Span kinds accepted; e.g. ("server",) to count only engine-side spans when a
    # gateway and the engine both report the same request.
    span_kinds: tuple[str, ...] = ("unspecified", "internal", "server", "client")


class Pricer(Protocol):
    """Cost of one request in USD (``collector.pricing.Pricer`` fits)."""

    def request_cost(self, record: RequestRecord) -> float: ...


def is_llm_span(name: str, attributes: Mapping[str, Any]) -> bool:
    """Cheap first check: the span name and at most three key lookups."""
    if name == VLLM_SPAN:
        return True
    op = attributes.get(OPERATION)
    if op is not None:  # a value of another type (even a list) names no known operation
        return not (isinstance(op, str) and op in NON_INFERENCE_OPERATIONS)
    return SYSTEM in attributes or LAT_E2E in attributes


def map_span(
    span: SpanView, mapping: AttributeMapping | None = None, pricer: Pricer | None = None
) -> RequestRecord | None:
    """The request row for ``span``, or ``None`` when it is not an LLM request span.

    Raises ``SpanMappingError`` when the span is an LLM span whose values are unusable
    (a token count that is not a number, a negative duration...), naming the attribute.
    """
    attrs = span.attributes
    if not is_llm_span(span.name, attrs):
        return None
    m = mapping or _DEFAULT_MAPPING
    if span.kind not in m.span_kinds:
        return None
    res = span.resource

    get = attrs.get
    e2e_s = _num(get(LAT_E2E), LAT_E2E)
    if e2e_s is None:
        e2e_s = max(span.end_ns - span.start_ns, 0) / 1e9
    ttft_s = _num(*_first(get, LAT_TTFT, TIME_TO_FIRST_CHUNK, SERVER_TTFT))
    queue_s = _num(get(LAT_QUEUE), LAT_QUEUE)
    prefill_s = _num(get(LAT_PREFILL), LAT_PREFILL)
    decode_s = _num(get(LAT_DECODE), LAT_DECODE)
    if decode_s is None and ttft_s is not None and e2e_s >= ttft_s:
        decode_s = e2e_s - ttft_s

    input_tokens = _count(*_first(get, INPUT_TOKENS, PROMPT_TOKENS))
    output_tokens = _count(*_first(get, OUTPUT_TOKENS, COMPLETION_TOKENS))
    cached_tokens = _count(*_first(get, CACHE_READ, CACHE_READ_OLD))

    tpot_s = None
    if ttft_s is not None and output_tokens > 1 and e2e_s >= ttft_s:
        tpot_s = (e2e_s - ttft_s) / (output_tokens - 1)
    tps = None
    if decode_s is not None and decode_s > 0 and output_tokens > 1:
        tps = (output_tokens - 1) / decode_s

    raw_error = attrs.get(ERROR_TYPE)
    error_type = _text(raw_error) if raw_error is not None else ""
    failed = span.status_error or bool(error_type)
    if failed and not error_type:
        error_type = "_OTHER"  # the OTel convention's value when the cause is unknown

    model = _lookup(m.model_keys, attrs, res)
    pool = _lookup(m.pool_keys, attrs, res) or m.pool_by_model.get(model, "") or m.default_pool
    kept = {k: _text(attrs[k]) for k in m.keep_attributes if k in attrs}
    kept["span.kind"] = span.kind

    if not _MIN_START_NS <= span.start_ns <= _MAX_START_NS:
        raise SpanMappingError(
            f"span start time {span.start_ns} ns is not a time the store can hold "
            "(expected unix nanoseconds between 1970 and 2262)"
        )
    record = RequestRecord(
        ts=_EPOCH + timedelta(microseconds=span.start_ns // 1000),
        pool=pool,
        model=model,
        replica=_lookup(m.replica_keys, attrs, res),
        tenant=_lookup(m.tenant_keys, attrs, res),
        priority=_lookup(m.priority_keys, attrs, res),
        status="error" if failed else "ok",
        error_type=error_type,
        finish_reason=_finish_reason(attrs.get(FINISH_REASONS)),
        trace_id=span.trace_id,
        span_id=span.span_id,
        ttft_us=_us(ttft_s),
        tpot_us=_us(tpot_s),
        e2e_us=_us(e2e_s),
        queue_us=_us(queue_s),
        prefill_us=_us(prefill_s),
        decode_us=_us(decode_s),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=min(cached_tokens, input_tokens) if input_tokens else cached_tokens,
        output_tokens_per_s=tps,
        attributes=kept,
    )
    # Configured prices win; a cost the producer reported fills in where none applies.
    cost = 0.0
    if pricer is not None:
        try:
            cost = float(pricer.request_cost(record))
        except Exception as exc:  # a pricing fault must not lose the request row
            kept["governor.cost_error"] = f"{type(exc).__name__}: {exc}"
    if cost == 0.0:
        cost = _number(attrs, USAGE_COST) or 0.0
    if cost:
        # The record is ours alone until returned: set the field in place instead of
        # building a second frozen record with ``replace`` (the constructor is most of
        # the mapping's cost).
        object.__setattr__(record, "cost_usd", cost)
    return record


_DEFAULT_MAPPING = AttributeMapping()

# Every attribute key map_span reads on its own account.
_READ = frozenset({
    OPERATION, SYSTEM, REQUEST_MODEL, RESPONSE_MODEL, INPUT_TOKENS, OUTPUT_TOKENS,
    PROMPT_TOKENS, COMPLETION_TOKENS, CACHE_READ, CACHE_READ_OLD, FINISH_REASONS,
    TIME_TO_FIRST_CHUNK, SERVER_TTFT, ERROR_TYPE, USAGE_COST, LAT_TTFT, LAT_E2E, LAT_QUEUE,
    LAT_PREFILL, LAT_DECODE,
})  # fmt: skip


def wanted_keys(mapping: AttributeMapping | None = None) -> frozenset[str]:
    """The attribute keys ``map_span`` can read with ``mapping``; decoders may skip the rest."""
    m = mapping or _DEFAULT_MAPPING
    return _READ.union(
        m.pool_keys, m.replica_keys, m.model_keys, m.tenant_keys, m.priority_keys,
        m.keep_attributes,
    )  # fmt: skip


def _lookup(keys: tuple[str, ...], attrs: Mapping[str, Any], res: Mapping[str, Any]) -> str:
    for key in keys:
        value = attrs.get(key)
        if value is None:
            value = res.get(key)
        if value is None or value == "":
            continue
        text = _text(value)
        if key == "service.name" and text.startswith(_UNKNOWN_SERVICE):
            continue
        return text
    return ""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _finish_reason(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return str(value[0]) if value else ""
    return str(value)


def _first(get: Any, *keys: str) -> tuple[Any, str]:
    """(value, key) of the first key present, or (None, last key)."""
    for key in keys:
        value = get(key)
        if value is not None:
            return value, key
    return None, keys[-1]


def _count(value: Any, key: str) -> int:
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= _UINT32_MAX:
        return value
    number = _checked_number(key, value)
    if number != int(number):
        raise SpanMappingError(f"{key}: expected a whole number of tokens, got {value!r}")
    return min(int(number), _UINT32_MAX)


def _number(attrs: Mapping[str, Any], key: str) -> float | None:
    return _num(attrs.get(key), key)


def _num(value: Any, key: str) -> float | None:
    if value is None:
        return None
    kind = type(value)
    # Fast path for what producers send: a finite, non-negative float or int.
    if (kind is float or kind is int) and 0 <= value < _INF:
        return value  # type: ignore[no-any-return]
    return _checked_number(key, value)


_INF = float("inf")


def _checked_number(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpanMappingError(f"{key}: expected a number, got a boolean ({value!r})")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise SpanMappingError(f"{key}: expected a number, got {value!r}") from None
    else:
        raise SpanMappingError(f"{key}: expected a number, got {type(value).__name__}")
    if number != number or number in (float("inf"), float("-inf")):
        raise SpanMappingError(f"{key}: expected a finite number, got {value!r}")
    if number < 0:
        raise SpanMappingError(f"{key}: must not be negative, got {value!r}")
    return number


def _us(seconds: float | None) -> int | None:
    if seconds is None:
        return None
    us = int(seconds * 1e6 + 0.5)  # seconds >= 0 here: round half up
    # Saturate rather than overflow the UInt32 columns (about 71 minutes).
    return us if us <= _UINT32_MAX else _UINT32_MAX
