"""``POST /v1/traces``: the OTLP/HTTP trace receiver (protobuf or JSON, optionally gzip).

Responses follow the OTLP/HTTP spec: 200 with an ``ExportTraceServiceResponse`` (with
``partial_success`` when some LLM spans could not be mapped), 400 for a body that cannot
be decoded, 413 over the size limit, 415 for other content types, 503 with ``Retry-After``
when the store writer's queue has no room (the exporter retries; nothing is half-taken).
Each error carries a ``google.rpc.Status`` whose message says what was wrong, in the
request's encoding.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from collector.errors import OtlpDecodeError, PayloadTooLarge, UnsupportedContent
from collector.otlp import JSON, PROTOBUF, media_type, status_body, success_body
from controlplane.ingest import SERVICE, IngestOverloaded, OtlpIngest

log = logging.getLogger(__name__)

router = APIRouter()

# google.rpc.Code values carried in the Status body.
_INVALID_ARGUMENT = 3
_UNAUTHENTICATED = 16
_UNAVAILABLE = 14
_RESOURCE_EXHAUSTED = 8
# Seconds an overloaded receiver asks exporters to wait (OTLP/HTTP: 503 is retryable).
_RETRY_AFTER_S = "1"


# Protobuf bodies up to this size are decoded on the event loop (see export_traces):
# ~1,700 spans, ~6 ms of CPU at most. Compressed ones inflate (random ids keep OTLP
# protobuf to ~2-4x), so their limit is smaller. JSON (the slower reference decoder)
# always goes to a worker thread.
INLINE_MAX_BYTES = 1 << 20
INLINE_MAX_GZIP_BYTES = 256 << 10


def _inline_limit(media: str, encoding: str | None) -> int:
    if media != PROTOBUF:
        return -1
    identity = encoding is None or encoding.strip().lower() in ("", "identity")
    return INLINE_MAX_BYTES if identity else INLINE_MAX_GZIP_BYTES


def _reply(media: str, status: int, code: int, message: str) -> Response:
    return Response(status_body(media, code, message), status_code=status, media_type=media)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/traces")
async def export_traces(request: Request) -> Response:
    ingest: OtlpIngest | None = request.app.state.ctx.services.get(SERVICE)
    ctype = request.headers.get("content-type")
    try:
        media = media_type(ctype)
    except UnsupportedContent as exc:
        return _reply(JSON, 415, _INVALID_ARGUMENT, str(exc))
    if ingest is None:
        return _reply(media, 503, _UNAVAILABLE, "the OTLP receiver is not enabled")
    if not ingest.authorized(request.headers.get("authorization")):
        ingest.count_request("unauthorized")
        resp = _reply(media, 401, _UNAUTHENTICATED, "missing or wrong bearer token")
        resp.headers["WWW-Authenticate"] = "Bearer"
        return resp
    body = await _read_limited(request, ingest.max_body_bytes)
    if body is None:
        ingest.count_request("too_large")
        return _reply(
            media,
            413,
            _RESOURCE_EXHAUSTED,
            f"body exceeds the limit of {ingest.max_body_bytes} bytes",
        )
    encoding = request.headers.get("content-encoding")
    try:
        if len(body) <= _inline_limit(media, encoding):
            # A usual export (the SDK's 512 spans, ~300 kB) is ~2-4 ms of CPU: handled on
            # the event loop, since the hop to a worker thread and back (and the GIL
            # handoffs it brings) cost as much again (docs/ARCHITECTURE.md).
            result = ingest.handle(body, ctype, encoding)
        else:  # larger ones would stall other requests: a worker thread
            result = await run_in_threadpool(ingest.handle, body, ctype, encoding)
    except PayloadTooLarge as exc:
        ingest.count_request("too_large")
        return _reply(media, 413, _RESOURCE_EXHAUSTED, str(exc))
    except UnsupportedContent as exc:
        ingest.count_request("unsupported")
        return _reply(media, 415, _INVALID_ARGUMENT, str(exc))
    except IngestOverloaded as exc:
        ingest.count_request("overloaded")
        resp = _reply(media, 503, _UNAVAILABLE, str(exc))
        resp.headers["Retry-After"] = _RETRY_AFTER_S
        return resp
    except OtlpDecodeError as exc:
        ingest.count_request("malformed")
        log.info("OTLP export rejected: %s", exc)
        return _reply(media, 400, _INVALID_ARGUMENT, str(exc))
    ingest.count_request("partial" if result.rejected else "ok")
    return Response(success_body(media, result.rejected, result.message), 200, media_type=media)


__all__ = ["PROTOBUF", "router"]
