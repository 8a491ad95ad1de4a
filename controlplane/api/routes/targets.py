"""``GET /api/v1/targets``: every scrape target with its health, as Prometheus shows targets."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from controlplane.api.auth import Principal, require
from controlplane.clock import utc

router = APIRouter()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else utc(ts).isoformat().replace("+00:00", "Z")


@router.get("/api/v1/targets")
def targets(
    request: Request,
    _: Annotated[Principal, Depends(require("viewer"))],
    pool: str = "",
) -> dict[str, Any]:
    service = request.app.state.ctx.services.get("scrape")
    if service is None:
        return {"targets": [], "count": 0, "discovery_errors": {}}
    out = []
    for t in service.targets():
        if pool and t.pool != pool:
            continue
        row = t.as_dict()
        row["health"] = "unknown" if t.up is None else ("up" if t.up else "down")
        row["last_scrape"] = _iso(t.last_scrape)
        row["last_success"] = _iso(t.last_success)
        out.append(row)
    return {
        "targets": out,
        "count": len(out),
        "discovery_errors": service.scraper.discovery_errors(),
    }
