"""``GET /api/v1/cost``: cost and cost per 1K tokens per pool, model and tenant."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from controlplane.api.auth import Principal, require
from controlplane.api.params import parse_time
from controlplane.clock import utc
from controlplane.cost import cost_report, pool_prices
from controlplane.store.rollups import Selector

router = APIRouter()


@router.get("/api/v1/cost")
def cost(
    request: Request,
    _: Annotated[Principal, Depends(require("viewer"))],
    pool: str = "",
    model: str = "",
    tenant: str = "",
    since: str | None = None,
    until: str | None = None,
    basis: Literal["usage", "allocation"] = "allocation",
    bucket_s: Annotated[int, Query(ge=1, le=3600)] = 60,
) -> dict[str, Any]:
    """Window defaults to the last 24 hours; ``basis`` as in ``controlplane.cost``."""
    ctx = request.app.state.ctx
    end = parse_time(until, "until") or utc(ctx.clock.now())
    start = parse_time(since, "since") or end - timedelta(hours=24)
    if end - start < timedelta(minutes=1):
        raise HTTPException(400, "since/until: the window must be at least one minute long")
    if pool and pool not in {p.name for p in ctx.config.pools}:
        known = ", ".join(p.name for p in ctx.config.pools) or "none configured"
        # Pools priced per request (API models) need not be configured: only warn via body.
        note = f"pool {pool!r} is not configured (configured: {known}); API prices only"
    else:
        note = ""
    report = cost_report(
        ctx.store, pool_prices(ctx.config.pools), Selector(pool, model, tenant),
        start, end, basis, bucket_s=bucket_s,
    )  # fmt: skip
    body = report.as_dict()
    if note:
        body["note"] = note
    return body
