"""The FastAPI application: shared context, error shapes, route discovery, self-metrics."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.api import routes as _routes
from controlplane.errors import ConfigError, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from controlplane.server import AppContext

log = logging.getLogger(__name__)


def _validation_message(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        out.append({"field": loc, "error": str(err.get("msg", ""))})
    return out


class _HttpMetrics:
    """Counts and times requests by route template. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` (``@app.middleware``) pipes every request body through an extra
    stream and task, a cost each OTLP export paid."""

    def __init__(self, app: ASGIApp, requests_total: Counter, latency: Histogram) -> None:
        self.app, self.requests_total, self.latency = app, requests_total, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts: the app raised

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")  # set by the router
            self.requests_total.labels(path, scope["method"], str(status)).inc()
            self.latency.labels(path).observe(time.perf_counter() - start)


def create_app(ctx: AppContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.start()
        try:
            yield
        finally:
            ctx.stop()

    app = FastAPI(title="Governor", version="0.1.0", lifespan=lifespan)
    app.state.ctx = ctx

    app.add_middleware(
        _HttpMetrics,
        requests_total=Counter(
            "governor_http_requests", "HTTP requests served", ["route", "method", "code"],
            registry=ctx.registry,
        ),
        latency=Histogram(
            "governor_http_request_duration_seconds", "HTTP request latency", ["route"],
            registry=ctx.registry,
        ),
    )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = _validation_message(exc)
        summary = "; ".join(f"{p['field']}: {p['error']}" for p in problems)
        return JSONResponse({"error": f"invalid request: {summary}", "problems": problems}, 400)

    @app.exception_handler(ConfigError)
    async def _bad_config(request: Request, exc: ConfigError) -> JSONResponse:
        problems = [{"field": p.path, "error": p.message} for p in exc.problems]
        return JSONResponse({"error": str(exc), "problems": problems}, 400)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"error": f"store unavailable: {exc}"}, 503)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error on %s: %s", request.url.path, exc)
        return JSONResponse({"error": f"store error: {exc}"}, 500)

    for info in sorted(pkgutil.iter_modules(_routes.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"{_routes.__name__}.{info.name}")
        router = getattr(mod, "router", None)
        if router is not None:
            app.include_router(router)
    return app
