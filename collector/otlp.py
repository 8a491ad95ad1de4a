"""OTLP/HTTP trace bodies -> ``SpanView`` s, and the OTLP responses that go back.

Accepts what ``opentelemetry-exporter-otlp-proto-http`` (and so vLLM with
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf``) sends: a protobuf
``ExportTraceServiceRequest``, optionally gzip- or deflate-compressed; and OTLP/JSON
(the protobuf JSON mapping with the OTLP exceptions: trace and span ids as hex strings,
enums as integers, 64-bit integers usually as strings).

Only spans that pass the cheap LLM check (``collector.genai.is_llm_span``) are turned into
views; the others are counted and skipped. Decompression is bounded, so a small gzip
body cannot expand past the limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from collector.errors import OtlpDecodeError, PayloadTooLarge, UnsupportedContent
from collector.genai import LAT_E2E, OPERATION, SPAN_KINDS, SYSTEM, VLLM_SPAN, SpanView

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = (PROTOBUF, JSON)
_MARKERS = frozenset({OPERATION, SYSTEM, LAT_E2E})
_STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR


@dataclass
class TraceBatch:
    """The LLM-candidate spans of one export request, and how many spans it held."""

    spans: list[SpanView] = field(default_factory=list)
    total: int = 0


def media_type(content_type: str | None) -> str:
    """``application/x-protobuf`` or ``application/json``; else ``UnsupportedContent``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in CONTENT_TYPES:
        raise UnsupportedContent(
            f"unsupported content type {content_type or '(none)'!r}: send {PROTOBUF} or {JSON}"
        )
    return media


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body with its ``Content-Encoding`` removed, never more than ``max_bytes``."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
        return body
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        raise UnsupportedContent(f"unsupported content encoding {encoding!r}: use gzip or none")
    try:
        out = d.decompress(body, max_bytes + 1)
        if len(out) > max_bytes or d.unconsumed_tail:
            raise PayloadTooLarge(f"body decompresses to more than the limit of {max_bytes} bytes")
        out += d.flush()
    except zlib.error as exc:
        raise OtlpDecodeError(f"body is not valid {enc} data: {exc}") from exc
    if not d.eof:
        raise OtlpDecodeError(f"{enc} body is truncated: the compressed stream does not end")
    if len(out) > max_bytes:
        raise PayloadTooLarge(f"body decompresses to more than the limit of {max_bytes} bytes")
    return out


def decode(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    *,
    max_bytes: int = 16 * 1024 * 1024,
    wanted: frozenset[str] | None = None,
) -> TraceBatch:
    """Decode one ``POST /v1/traces`` body; raises an ``OtlpDecodeError`` saying what is wrong.

    ``wanted``: the only attribute keys to convert from protobuf (``genai.wanted_keys``);
    others (prompt and completion content, for instance) are skipped unconverted. JSON
    bodies keep every attribute, since they are validated in full anyway.
    """
    media = media_type(content_type)
    raw = decompress(body, content_encoding, max_bytes)
    return decode_protobuf(raw, wanted) if media == PROTOBUF else decode_json(raw)


# --- protobuf ------------------------------------------------------------------------------


def decode_protobuf(raw: bytes, wanted: frozenset[str] | None = None) -> TraceBatch:
    msg = ExportTraceServiceRequest()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise OtlpDecodeError(
            f"body is not a valid protobuf ExportTraceServiceRequest ({exc}); "
            "it may be truncated or not protobuf at all"
        ) from exc
    batch = TraceBatch()
    spans = batch.spans
    for ri, rs in enumerate(msg.resource_spans):
        resource: dict[str, Any] | None = None
        for si, ss in enumerate(rs.scope_spans):
            batch.total += len(ss.spans)
            for pi, sp in enumerate(ss.spans):
                name = sp.name
                if name != VLLM_SPAN and not _has_marker(sp.attributes):
                    continue
                if resource is None:
                    resource = _pb_attrs(rs.resource.attributes, wanted)
                trace_id = sp.trace_id
                span_id = sp.span_id
                kind = sp.kind
                if (
                    len(trace_id) not in (0, 16)
                    or len(span_id) not in (0, 8)
                    or not (0 <= kind < len(SPAN_KINDS))
                ):
                    _bad_span(sp, f"resource_spans[{ri}].scope_spans[{si}].spans[{pi}]")
                status = sp.status
                spans.append(
                    SpanView(
                        name=name,
                        attributes=_pb_attrs(sp.attributes, wanted),
                        resource=resource,
                        start_ns=sp.start_time_unix_nano,
                        end_ns=sp.end_time_unix_nano,
                        kind=SPAN_KINDS[kind],
                        status_error=status.code == _STATUS_ERROR,
                        status_message=status.message,
                        trace_id=trace_id.hex(),
                        span_id=span_id.hex(),
                    )
                )
    return batch


def _bad_span(sp: Any, where: str) -> None:
    """Raise the error that names what is wrong with a span's ids or kind."""
    _pb_id(sp.trace_id, 16, where + ".trace_id")
    _pb_id(sp.span_id, 8, where + ".span_id")
    _kind(sp.kind, where)


def _has_marker(attributes: Any) -> bool:
    for kv in attributes:
        if kv.key in _MARKERS:
            return True
    return False


def _pb_attrs(attributes: Any, wanted: frozenset[str] | None = None) -> dict[str, Any]:
    # Scalars inline (the common case): a Python call per attribute is a third of the cost.
    out = {}
    for kv in attributes:
        key = kv.key
        if wanted is not None and key not in wanted:
            continue
        v = kv.value
        which = v.WhichOneof("value")
        out[key] = getattr(v, which) if which in _SCALARS else _pb_value(v)
    return out


_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _pb_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which in _SCALARS:
        return getattr(v, which)
    if which == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return None


def _pb_id(raw: bytes, size: int, where: str) -> str:
    if not raw:
        return ""
    if len(raw) != size:
        raise OtlpDecodeError(f"{where}: expected {size} bytes, got {len(raw)}")
    return raw.hex()


def _kind(value: int, where: str) -> str:
    if 0 <= value < len(SPAN_KINDS):
        return SPAN_KINDS[value]
    raise OtlpDecodeError(f"{where}.kind: unknown span kind {value}")


# --- JSON ----------------------------------------------------------------------------------


def decode_json(raw: bytes) -> TraceBatch:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OtlpDecodeError(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise OtlpDecodeError("body is not valid OTLP/JSON: nested too deeply") from exc
    try:
        return _json_batch(doc)
    except RecursionError as exc:
        raise OtlpDecodeError("body is not valid OTLP/JSON: values nested too deeply") from exc


def _json_batch(doc: Any) -> TraceBatch:
    _expect(doc, dict, "body")
    batch = TraceBatch()
    for ri, rs in enumerate(_list(doc, ("resourceSpans", "resource_spans"), "")):
        rwhere = f"resourceSpans[{ri}]"
        _expect(rs, dict, rwhere)
        res = _get(rs, ("resource",), {})
        _expect(res, dict, rwhere + ".resource")
        resource: dict[str, Any] | None = None
        for si, ss in enumerate(_list(rs, ("scopeSpans", "scope_spans"), rwhere)):
            swhere = f"{rwhere}.scopeSpans[{si}]"
            _expect(ss, dict, swhere)
            spans = _list(ss, ("spans",), swhere)
            batch.total += len(spans)
            for pi, sp in enumerate(spans):
                where = f"{swhere}.spans[{pi}]"
                _expect(sp, dict, where)
                name = _get(sp, ("name",), "")
                _expect(name, str, where + ".name")
                attrs = _json_attrs(_list(sp, ("attributes",), where), where + ".attributes")
                if name != VLLM_SPAN and not _MARKERS.intersection(attrs):
                    continue
                if resource is None:
                    resource = _json_attrs(
                        _list(res, ("attributes",), rwhere + ".resource"),
                        rwhere + ".resource.attributes",
                    )
                status = _get(sp, ("status",), {})
                _expect(status, dict, where + ".status")
                message = _get(status, ("message",), "")
                _expect(message, str, where + ".status.message")
                batch.spans.append(
                    SpanView(
                        name=name,
                        attributes=attrs,
                        resource=resource,
                        start_ns=_int(
                            _get(sp, ("startTimeUnixNano", "start_time_unix_nano"), 0),
                            where + ".startTimeUnixNano",
                        ),
                        end_ns=_int(
                            _get(sp, ("endTimeUnixNano", "end_time_unix_nano"), 0),
                            where + ".endTimeUnixNano",
                        ),
                        kind=_kind(
                            _enum(_get(sp, ("kind",), 0), _KIND_NAMES, where + ".kind"), where
                        ),
                        status_error=_enum(
                            _get(status, ("code",), 0), _STATUS_NAMES, where + ".status.code"
                        )
                        == _STATUS_ERROR,
                        status_message=message,
                        trace_id=_hex_id(
                            _get(sp, ("traceId", "trace_id"), ""), 16, where + ".traceId"
                        ),
                        span_id=_hex_id(_get(sp, ("spanId", "span_id"), ""), 8, where + ".spanId"),
                    )
                )
    return batch


def _get(d: Mapping[str, Any], names: tuple[str, ...], default: Any) -> Any:
    for n in names:
        if n in d:
            value = d[n]
            return default if value is None else value
    return default


def _list(d: Mapping[str, Any], names: tuple[str, ...], where: str) -> list[Any]:
    value = _get(d, names, [])
    _expect(value, list, f"{where}.{names[0]}" if where else names[0])
    return value  # type: ignore[no-any-return]


def _expect(value: Any, typ: type, where: str) -> None:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        names = {dict: "an object", list: "an array", str: "a string", int: "an integer"}
        raise OtlpDecodeError(
            f"{where}: expected {names.get(typ, typ.__name__)}, got {type(value).__name__}"
        )


def _int(value: Any, where: str) -> int:
    # Protobuf JSON writes 64-bit integers as strings; numbers are accepted too.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    digits = value[1:] if isinstance(value, str) and value.startswith("-") else value
    # ASCII only (str.isdigit accepts "²"), and short enough for an int64.
    if isinstance(digits, str) and digits.isascii() and digits.isdigit() and len(digits) <= 20:
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise OtlpDecodeError(f"{where}: expected an integer (or a string of digits), got {value!r}")


# OTLP/JSON requires enum integers; protobuf's JSON mapping also allows the names.
_KIND_NAMES = {f"SPAN_KIND_{k.upper()}": i for i, k in enumerate(SPAN_KINDS)}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _enum(value: Any, names: Mapping[str, int], where: str) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    return _int(value, where)


def _hex_id(value: Any, size: int, where: str) -> str:
    _expect(value, str, where)
    if value == "":
        return ""
    text: str = value
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise OtlpDecodeError(f"{where}: expected {size * 2} hex characters, got {text!r}")
    return text.lower()


def _json_attrs(items: list[Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, kv in enumerate(items):
        w = f"{where}[{i}]"
        _expect(kv, dict, w)
        key = kv.get("key")
        _expect(key, str, w + ".key")
        value = kv.get("value", {})
        out[key] = _json_value(value if value is not None else {}, f"{w}.value")
    return out


def _json_value(v: Any, where: str) -> Any:
    _expect(v, dict, where)
    if not v:
        return None
    if "stringValue" in v or "string_value" in v:
        s = _get(v, ("stringValue", "string_value"), "")
        _expect(s, str, where + ".stringValue")
        return s
    if "intValue" in v or "int_value" in v:
        return _int(_get(v, ("intValue", "int_value"), 0), where + ".intValue")
    if "doubleValue" in v or "double_value" in v:
        d = _get(v, ("doubleValue", "double_value"), 0.0)
        if isinstance(d, str) and d in ("NaN", "Infinity", "-Infinity"):
            return float(d)
        if isinstance(d, bool) or not isinstance(d, int | float):
            raise OtlpDecodeError(f"{where}.doubleValue: expected a number, got {d!r}")
        return float(d)
    if "boolValue" in v or "bool_value" in v:
        b = _get(v, ("boolValue", "bool_value"), False)
        if not isinstance(b, bool):
            raise OtlpDecodeError(f"{where}.boolValue: expected true or false, got {b!r}")
        return b
    if "arrayValue" in v or "array_value" in v:
        arr = _get(v, ("arrayValue", "array_value"), {})
        _expect(arr, dict, where + ".arrayValue")
        values = _list(arr, ("values",), where + ".arrayValue")
        return [_json_value(x, f"{where}.arrayValue.values[{i}]") for i, x in enumerate(values)]
    if "kvlistValue" in v or "kvlist_value" in v:
        kvl = _get(v, ("kvlistValue", "kvlist_value"), {})
        _expect(kvl, dict, where + ".kvlistValue")
        return _json_attrs(
            _list(kvl, ("values",), where + ".kvlistValue"), where + ".kvlistValue.values"
        )
    if "bytesValue" in v or "bytes_value" in v:
        raw = _get(v, ("bytesValue", "bytes_value"), "")
        _expect(raw, str, where + ".bytesValue")
        try:
            return base64.b64decode(raw, validate=True).hex()
        except binascii.Error:
            raise OtlpDecodeError(f"{where}.bytesValue: expected base64, got {raw!r}") from None
    raise OtlpDecodeError(f"{where}: unknown value type {', '.join(sorted(v))}")


# --- responses -----------------------------------------------------------------------------


def success_body(media: str, rejected: int = 0, message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` set when spans were rejected."""
    if media == JSON:
        if not rejected and not message:
            return b"{}"
        return json.dumps(
            {"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}}
        ).encode()
    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        )
    body: bytes = resp.SerializeToString()
    return body


def status_body(media: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status``, the body OTLP/HTTP error responses carry."""
    if media == JSON:
        return json.dumps({"code": code, "message": message}).encode()
    body: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
    return body


__all__ = [
    "CONTENT_TYPES",
    "JSON",
    "PROTOBUF",
    "TraceBatch",
    "decode",
    "decode_json",
    "decode_protobuf",
    "decompress",
    "media_type",
    "status_body",
    "success_body",
]
