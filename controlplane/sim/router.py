"""The local fleet's data plane: an OpenAI-compatible proxy in front of replicas.

* least-outstanding-requests balancing over serving replicas (``balancer.py``);
* streaming passthrough: upstream SSE bytes are forwarded as they arrive;
* drain: a draining replica gets no new requests and reports ``drained`` once idle;
* admission per tenant and priority (``admission.py``): 429 with ``Retry-After``;
* a replica dying mid-stream ends that stream with an SSE error event, counted in
  ``governor_router_stream_errors_total``; other streams are unaffected;
* one CLIENT span per request (OTel GenAI attributes, gateway-side time to first chunk)
  through an injected tracer, e.g. one whose provider runs ``LLMSpanProcessor``.

Forwarding one response, its accounting and its span live in ``router_call.py``.

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
from opentelemetry.trace import SpanKind
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)

from controlplane.clock import Clock, SystemClock
from controlplane.errors import ConfigError
from controlplane.sim import wire
from controlplane.sim.admission import Admission, parse_limits
from controlplane.sim.balancer import Balancer, UnknownBackend
from controlplane.sim.router_call import (
    REPLICA_HEADER,
    ProxiedCall,
    RouterMetrics,
    request_attributes,
)

log = logging.getLogger(__name__)

TENANT_HEADER = wire.TENANT_HEADER
PRIORITY_HEADER = wire.PRIORITY_HEADER
DEFAULT_TENANT = "default"
DEFAULT_PRIORITY = "0"
# Connection failures before any byte was sent are retried on another replica.
MAX_ATTEMPTS = 3
MAX_DRAIN_WAIT_S = 600.0


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
                attributes=request_attributes(parsed, tenant, priority, backend, router.pool),
            )  # fmt: skip
            call = ProxiedCall(m, router.balancer, backend, resp, span, start, parsed.stream)
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
