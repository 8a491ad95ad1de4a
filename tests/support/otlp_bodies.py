"""OTLP/protobuf export bodies built from plain Python values, for tests that need
exact control over attribute types (the SDK's exporter only emits what its spans hold)."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def any_value(v: Any) -> AnyValue:
    if v is None:
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=k, value=any_value(x)) for k, x in v.items())
        return out
    out = AnyValue()
    out.array_value.values.extend(any_value(x) for x in v)
    return out


def body_of(resources: list[tuple[list[tuple[str, Any]], list[dict[str, Any]]]]) -> bytes:
    req = ExportTraceServiceRequest()
    for res_attrs, span_list in resources:
        rs = req.resource_spans.add()
        for k, v in res_attrs:
            rs.resource.attributes.add(key=k, value=any_value(v))
        ss = rs.scope_spans.add()
        for s in span_list:
            sp = ss.spans.add(
                name=s["name"], kind=s["kind"], trace_id=s["trace_id"], span_id=s["span_id"],
                start_time_unix_nano=s["start"], end_time_unix_nano=s["end"],
            )  # fmt: skip
            sp.status.code = s["status"]
            sp.status.message = s["message"]
            for k, v in s["attrs"]:
                sp.attributes.add(key=k, value=any_value(v))
    return req.SerializeToString()
