"""HTTP surface of a simulated replica, shaped like vLLM's OpenAI server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane.sim import wire
from controlplane.sim.engine import RequestRejected
from controlplane.sim.replica import Replica, ReplicaUnavailable, Waiter
from controlplane.sim.replica_faults import FaultError, parse_fault
from controlplane.sim.replica_metrics import render_dcgm

# A non-streaming request checks this often whether its client went away.
DISCONNECT_POLL_S = 1.0
_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
          503: "ServiceUnavailableError"}  # fmt: skip


def _error(status: int, message: str) -> Response:
    return JSONResponse(wire.error_body(message, _TYPES.get(status, "Error"), status), status)


def create_app(replica: Replica) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        replica.start()
        try:
            yield
        finally:
            replica.stop()

    app = FastAPI(title=f"governor sim replica {replica.config.name}", lifespan=lifespan)
    app.state.replica = replica
    model = replica.config.model

    @app.get("/health")
    def health() -> Response:
        if replica.failed:
            return JSONResponse({"status": "engine failed"}, 503)
        if not replica.ready:
            return JSONResponse({"status": "starting"}, 503)
        return Response(status_code=200)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": model, "object": "model", "owned_by": "vllm", "root": model,
                "max_model_len": replica.config.params.max_model_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(replica.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/dcgm/metrics")
    def dcgm() -> Response:
        text = render_dcgm(replica.identity, replica.gpu_values())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/admin/fault")
    def faults() -> dict[str, Any]:
        return {"faults": [f.to_dict() for f in replica.faults.active()]}

    @app.post("/admin/fault")
    async def set_fault(request: Request) -> Response:
        try:
            fault = parse_fault(await request.json())
        except (ValueError, FaultError) as exc:
            return _error(400, str(exc))
        if fault.kind == "crash":
            # Answer first, then die: the caller learns the fault was taken.
            asyncio.get_running_loop().call_later(0.05, replica.crash)
        replica.faults.set(fault)
        if fault.kind == "xid":
            replica.fail_in_flight(f"xid_{fault.xid}", f"GPU error: Xid {fault.xid}")
        return JSONResponse({"faults": [f.to_dict() for f in replica.faults.active()]})

    @app.delete("/admin/fault")
    def clear_fault(kind: str | None = None) -> Response:
        try:
            replica.faults.clear(kind)
        except FaultError as exc:
            return _error(400, str(exc))
        return JSONResponse({"faults": [f.to_dict() for f in replica.faults.active()]})

    async def completions(request: Request) -> Response:
        kind = wire.PATHS[request.url.path]
        try:
            req = wire.parse_request(kind, await request.body(), model)
        except wire.BadRequest as exc:
            return _error(400, str(exc))
        tenant = request.headers.get(wire.TENANT_HEADER, "")
        priority = request.headers.get(wire.PRIORITY_HEADER, "0")
        try:
            waiter = replica.submit(req, tenant, priority)
        except ReplicaUnavailable as exc:
            return _error(exc.status, str(exc))
        except RequestRejected as exc:
            return _error(400, str(exc))
        if req.stream:
            return StreamingResponse(_stream(replica, waiter), media_type="text/event-stream")
        return await _whole(replica, waiter, request)

    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", completions, methods=["POST"])
    return app


async def _stream(replica: Replica, w: Waiter) -> AsyncIterator[bytes]:
    req = w.request
    model = replica.config.model
    produced = 0
    done = False
    try:
        while True:
            what, value, finish = await w.queue.get()
            if what == "error":
                done = True
                yield wire.sse(wire.error_body(value, "InternalServerError", 500))
                yield wire.DONE
                return
            text = wire.make_text(value, produced)
            yield wire.sse(
                wire.chunk(req.kind, w.rid, model, w.created, text, finish, first=produced == 0)
            )
            produced += value
            if finish is not None:
                done = True
                if req.include_usage:
                    u = wire.usage(req.prompt_tokens, produced)
                    yield wire.sse(wire.usage_chunk(req.kind, w.rid, model, w.created, u))
                yield wire.DONE
                return
    finally:
        if not done:
            replica.cancel(w.rid)


async def _whole(replica: Replica, w: Waiter, request: Request) -> Response:
    produced = 0
    while True:
        try:
            what, value, finish = await asyncio.wait_for(w.queue.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                replica.cancel(w.rid)
                return Response(status_code=499)
            continue
        if what == "error":
            return _error(500, value)
        produced += value
        if finish is not None:
            break
    req = w.request
    body = wire.response(
        req.kind, w.rid, replica.config.model, w.created, wire.make_text(produced), finish,
        wire.usage(req.prompt_tokens, produced),
    )  # fmt: skip
    return Response(json.dumps(body), media_type="application/json")
