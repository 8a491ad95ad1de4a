"""Health, Governor's own metrics, and raw request records."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane.api.auth import Principal, require
from controlplane.api.params import parse_time
from controlplane.clock import utc
from controlplane.store.queries import list_requests

router = APIRouter()


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    st = ctx.store.status()
    body = {
        "status": "ok" if st.ok else "degraded",
        "store": {
            "ok": st.ok,
            "driver": st.driver,
            "database": st.database,
            "schema_version": st.schema_version,
            "detail": st.detail,
        },
        "components": ctx.component_health(),
    }
    return JSONResponse(body, status_code=200 if st.ok else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.ctx.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/requests")
def requests(
    request: Request,
    _: Annotated[Principal, Depends(require("viewer"))],
    pool: str = "",
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    end = parse_time(until, "until") or utc(ctx.clock.now())
    start = parse_time(since, "since") or end - timedelta(hours=1)
    rows = list_requests(ctx.store, pool=pool, since=start, until=end, limit=limit)
    return {"requests": rows, "count": len(rows)}
