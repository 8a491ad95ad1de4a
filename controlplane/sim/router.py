"""The local fleet's data plane: an OpenAI-compatible proxy in front of replicas.

* least-outstanding-requests balancing over serving replicas (``balancer.py``);
* streaming passthrough: upstream SSE bytes are forwarded as they arrive;
* drain: a draining replica gets no new requests and reports ``drained`` once idle;
* admission per tenant and priority (``admission.py``): 429 with ``Retry-After``;
* a replica dying mid-stream ends that stream with an SSE error event, counted in
  ``governor_router_stream_errors_total``; other streams are unaffected;
* one CLIENT span per request (OTel GenAI attributes, gateway-side time to first chunk)
  through an injected tracer, e.g. one whose provider runs ``LLMSpanProcessor``.

Tenant comes from the ``X-Tenant`` header (else the body's ``user``, else ``default``),
priority from ``X-Priority`` (else the body's ``priority``, else ``0``); both are
forwarded to the replica. Admin API (``/admin/...``) registers replicas, drains and sets
limits; the local fleet actuator drives it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from controlplane.clock import Clock, SystemClock
from controlplane.errors import ConfigError
from controlplane.sim import wire
from controlplane.sim.admission import Admission, parse_limits
from controlplane.sim.balancer import Backend, Balancer, UnknownBackend

log = logging.getLogger(__name__)

TENANT_HEADER = wire.TENANT_HEADER
PRIORITY_HEADER = wire.PRIORITY_HEADER
REPLICA_HEADER = "x-governor-replica"  # on responses: which replica served it
DEFAULT_TENANT = "default"
DEFAULT_PRIORITY = "0"
# Connection failures before any byte was sent are retried on another replica.
MAX_ATTEMPTS = 3
MAX_DRAIN_WAIT_S = 600.0
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "governor_router_requests", "Requests proxied, by replica and HTTP status",
            ["replica", "code"], registry=registry,
        )  # fmt: skip
        self.stream_errors = Counter(
            "governor_router_stream_errors",
            "Streams ended with an error event because the replica failed mid-stream",
            ["replica"], registry=registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "governor_router_upstream_errors",
            "Connections to a replica that failed before a response",
            ["replica"], registry=registry,
        )  # fmt: skip
        self.rejected = Counter(
            "governor_router_admission_rejected", "Requests refused with 429 by admission",
            ["tenant", "priority"], registry=registry,
        )  # fmt: skip
        self.no_replica = Counter(
            "governor_router_no_replica", "Requests refused with 503: no serving replica",
            registry=registry,
        )  # fmt: skip
        self.outstanding = Gauge(
            "governor_router_outstanding_requests", "Requests in flight per replica",
            ["replica"], registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "governor_router_time_to_first_chunk_seconds",
            "Gateway-side time from request to the first response byte",
            buckets=TTFT_BUCKETS, registry=registry,
        )  # fmt: skip


@dataclass
class Router:
    """State of one router; ``create_app`` serves it over HTTP."""

    model: str = ""
    pool: str = ""
    clock: Clock = field(default_factory=SystemClock)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    tracer: trace.Tracer | None = None
    request_timeout_s: float = 600.0
    balancer: Balancer = field(default_factory=Balancer)
    admission: Admission = field(init=False)
    metrics: RouterMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(clock=self.clock)
        self.metrics = RouterMetrics(self.registry)
        self.tracer = self.tracer or trace.NoOpTracer()


def _tenant_priority(request: Request, body: dict[str, Any]) -> tuple[str, str]:
    tenant = request.headers.get(TENANT_HEADER) or body.get("user") or DEFAULT_TENANT
    priority = request.headers.get(PRIORITY_HEADER) or body.get("priority") or DEFAULT_PRIORITY
    return str(tenant), str(priority)


def _error(
    status: int, message: str, type_: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(wire.error_body(message, type_, status), status, headers=headers)


def create_app(router: Router) -> FastAPI:
    client: httpx.AsyncClient | None = None

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal client
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        timeout = httpx.Timeout(router.request_timeout_s, connect=5.0)
        client = httpx.AsyncClient(limits=limits, timeout=timeout)
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(title="governor sim router", lifespan=lifespan)
    app.state.router = router
    m = router.metrics

    @app.get("/health")
    def health() -> Response:
        serving = [b for b in router.balancer.list() if b["state"] == "serving"]
        status = 200 if serving else 503
        return JSONResponse({"status": "ok" if serving else "no serving replica"}, status)

    @app.get("/metrics")
    def metrics() -> Response:
        for name, n in router.balancer.outstanding().items():
            m.outstanding.labels(name).set(n)
        return Response(generate_latest(router.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": router.model, "object": "model", "owned_by": "governor-sim"}],
        }

    @app.get("/admin/replicas")
    def list_replicas() -> dict[str, Any]:
        return {"replicas": router.balancer.list()}

    @app.put("/admin/replicas/{name}")
    async def add_replica(name: str, request: Request) -> Response:
        body = await _json(request)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return _error(400, "url must be an http(s) URL", "invalid_request_error")
        return JSONResponse(router.balancer.add(name, url).snapshot())

    @app.delete("/admin/replicas/{name}")
    def remove_replica(name: str) -> Response:
        return JSONResponse(router.balancer.remove(name).snapshot())

    @app.post("/admin/replicas/{name}/drain")
    async def drain(name: str, wait_s: float = 0.0) -> Response:
        """Stop routing to ``name``; with ``wait_s``, answer once it is drained (or when
        the wait is over, still ``draining``)."""
        backend = router.balancer.drain(name)
        if wait_s > 0:
            await asyncio.to_thread(backend.drained.wait, min(wait_s, MAX_DRAIN_WAIT_S))
        return JSONResponse(backend.snapshot())

    @app.post("/admin/replicas/{name}/undrain")
    def undrain(name: str) -> Response:
        return JSONResponse(router.balancer.undrain(name).snapshot())

    @app.get("/admin/limits")
    def get_limits() -> dict[str, Any]:
        return {"limits": [lim.to_dict() for lim in router.admission.limits]}

    @app.put("/admin/limits")
    async def put_limits(request: Request) -> Response:
        body = await _json(request)
        items = body.get("limits") if isinstance(body, dict) else None
        if not isinstance(items, list):
            return _error(400, 'body must be {"limits": [...]}', "invalid_request_error")
        router.admission.set_limits(parse_limits(items))
        return JSONResponse({"limits": [lim.to_dict() for lim in router.admission.limits]})

    @app.exception_handler(UnknownBackend)
    async def _unknown(request: Request, exc: UnknownBackend) -> Response:
        return _error(404, str(exc), "not_found_error")

    @app.exception_handler(ConfigError)
    async def _invalid(request: Request, exc: ConfigError) -> Response:
        return _error(400, str(exc), "invalid_request_error")

    async def proxy(request: Request) -> Response:
        assert client is not None
        kind = wire.PATHS[request.url.path]
        raw = await request.body()
        try:
            parsed = wire.parse_request(kind, raw, router.model)
            body = json.loads(raw)
        except wire.BadRequest as exc:
            return _error(400, str(exc), "invalid_request_error")
        tenant, priority = _tenant_priority(request, body)
        decision = router.admission.check(
            tenant, priority, parsed.prompt_tokens + parsed.max_tokens
        )
        if not decision.allowed:
            m.rejected.labels(tenant, priority).inc()
            limited = (
                f"tenant={decision.limited_by[0]} priority={decision.limited_by[1]}"
                if (decision.limited_by)
                else ""
            )
            return _error(
                429,
                f"admission limit reached ({limited}); retry later",
                "rate_limit_error",
                headers={"Retry-After": decision.retry_after_header},
            )
        headers = {
            "content-type": "application/json",
            TENANT_HEADER: tenant,
            PRIORITY_HEADER: priority,
        }
        start = time.perf_counter()
        start_ns = time.time_ns()  # the span covers the whole gateway-side request
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS):
            backend = router.balancer.acquire(frozenset(tried))
            if backend is None:
                break
            tried.add(backend.name)
            upstream = client.build_request(
                "POST", backend.url + request.url.path, content=raw, headers=headers
            )
            try:
                resp = await client.send(upstream, stream=True)
            except httpx.TransportError as exc:
                log.warning("replica %s unreachable: %s", backend.name, exc)
                m.upstream_errors.labels(backend.name).inc()
                router.balancer.release(backend)
                continue
            span = router.tracer.start_span(  # type: ignore[union-attr]
                f"{kind} {parsed.model}", kind=SpanKind.CLIENT, start_time=start_ns,
                attributes=_request_attributes(parsed, tenant, priority, backend, router.pool),
            )  # fmt: skip
            call = _Call(router, backend, resp, span, start, parsed.stream)
            if parsed.stream and resp.status_code == 200:
                return StreamingResponse(
                    call.stream(), media_type="text/event-stream",
                    headers={"cache-control": "no-cache", REPLICA_HEADER: backend.name},
                )  # fmt: skip
            return await call.whole()
        m.no_replica.inc()
        return _error(503, "no serving replica available", "service_unavailable")

    app.add_api_route("/v1/completions", proxy, methods=["POST"])
    app.add_api_route("/v1/chat/completions", proxy, methods=["POST"])
    return app


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _request_attributes(
    parsed: wire.CompletionRequest, tenant: str, priority: str, backend: Backend, pool: str
) -> dict[str, Any]:
    host, _, port = backend.url.split("://", 1)[-1].partition(":")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": parsed.kind,
        "gen_ai.provider.name": "vllm",
        "gen_ai.request.model": parsed.model,
        "gen_ai.request.max_tokens": parsed.max_tokens,
        "gen_ai.request.stream": parsed.stream,
        "server.address": host,
        "governor.replica": backend.name,
        "governor.tenant": tenant,
        "governor.priority": priority,
    }
    if port.split("/")[0].isdigit():
        attrs["server.port"] = int(port.split("/")[0])
    if pool:
        attrs["governor.pool"] = pool
    return attrs


class _Call:
    """One proxied response: forwards it, then releases the replica and ends the span."""

    def __init__(
        self,
        router: Router,
        backend: Backend,
        resp: httpx.Response,
        span: trace.Span,
        start: float,
        stream: bool,
    ) -> None:
        self.router, self.backend, self.resp, self.span = router, backend, resp, span
        self.start = start
        self.stream_mode = stream
        self._usage: dict[str, Any] | None = None
        self._finish: str | None = None
        self._chunks = 0
        self._tail = b""

    def _first_byte(self) -> None:
        ttft = time.perf_counter() - self.start
        self.router.metrics.ttft.observe(ttft)
        self.span.set_attribute("gen_ai.response.time_to_first_chunk", ttft)

    def _scan(self, data: bytes) -> None:
        """Pick usage and finish reason out of SSE events (only lines that carry them)."""
        buf = self._tail + data
        *lines, self._tail = buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data: {"):
                continue
            self._chunks += 1
            if b'"usage"' not in line and b'"finish_reason":"' not in line:
                continue
            try:
                event = json.loads(line[6:])
            except ValueError:
                continue
            self._absorb(event)

    def _absorb(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        if isinstance(event.get("id"), str):
            self.span.set_attribute("gen_ai.response.id", event["id"])
        if isinstance(event.get("model"), str):
            self.span.set_attribute("gen_ai.response.model", event["model"])

    def _finish_span(self, error: str | None) -> None:
        if self._usage:
            self.span.set_attribute(
                "gen_ai.usage.input_tokens", int(self._usage.get("prompt_tokens", 0))
            )
            self.span.set_attribute(
                "gen_ai.usage.output_tokens", int(self._usage.get("completion_tokens", 0))
            )
        elif self.stream_mode and self._chunks:
            # Without include_usage each content chunk carries one token.
            self.span.set_attribute("gen_ai.usage.output_tokens", self._chunks)
        if self._finish:
            self.span.set_attribute("gen_ai.response.finish_reasons", [self._finish])
        if error is None and self.resp.status_code >= 400:
            error = str(self.resp.status_code)
        if error is not None:
            self.span.set_attribute("error.type", error)
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()

    async def whole(self) -> Response:
        error: str | None = None
        try:
            content = await self.resp.aread()
            self._first_byte()
        except httpx.HTTPError as exc:
            self.router.metrics.upstream_errors.labels(self.backend.name).inc()
            content = json.dumps(
                wire.error_body(f"replica {self.backend.name} failed: {exc}", "upstream_error", 502)
            ).encode()
            error = type(exc).__name__
            status = 502
        else:
            status = self.resp.status_code
            if status == 200:
                try:
                    self._absorb(json.loads(content))
                except ValueError:
                    pass
        finally:
            await self.resp.aclose()
            self.router.balancer.release(self.backend)
        self.router.metrics.requests.labels(self.backend.name, str(status)).inc()
        self._finish_span(error)
        media = self.resp.headers.get("content-type", "application/json")
        extra = {k: v for k, v in self.resp.headers.items() if k.lower() == "retry-after"}
        extra[REPLICA_HEADER] = self.backend.name
        return Response(content, status, media_type=media, headers=extra)

    async def stream(self) -> AsyncIterator[bytes]:
        error: str | None = None
        first = True
        last = b"\n\n"
        try:
            async for data in self.resp.aiter_raw():
                if first:
                    self._first_byte()
                    first = False
                self._scan(data)
                last = data
                yield data
        except httpx.HTTPError as exc:
            # The replica went away mid-stream: close this stream with an error event.
            error = type(exc).__name__
            self.router.metrics.stream_errors.labels(self.backend.name).inc()
            log.warning("replica %s failed mid-stream: %s", self.backend.name, exc)
            event = wire.error_body(
                f"replica {self.backend.name} failed mid-stream: {error}", "upstream_error", 502
            )
            yield (b"" if last.endswith(b"\n\n") else b"\n\n") + wire.sse(event) + wire.DONE
        finally:
            await self.resp.aclose()
            self.router.balancer.release(self.backend)
            code = "200" if error is None else "stream_error"
            self.router.metrics.requests.labels(self.backend.name, code).inc()
            self._finish_span(error)
