"""Alerts, silences and dead letters (``ctx.services["alerts"]``, an ``AlertEngine``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request

from alerts.engine import AlertEngine
from alerts.errors import InvalidInput, NotFound
from controlplane.api.auth import Principal, require

router = APIRouter()

_STATES = ("pending", "firing", "resolved")


def _engine(request: Request) -> AlertEngine:
    engine = request.app.state.ctx.services.get("alerts")
    if engine is None:
        raise HTTPException(503, "alerting is not running in this process")
    assert isinstance(engine, AlertEngine)
    return engine


@router.get("/api/v1/alerts")
def list_alerts(
    request: Request,
    _: Annotated[Principal, Depends(require("viewer"))],
    state: Annotated[str | None, Query(description="pending, firing or resolved")] = None,
    slo: str | None = None,
) -> dict[str, Any]:
    if state is not None and state not in _STATES:
        raise HTTPException(400, f"state: expected one of {', '.join(_STATES)}, got {state!r}")
    items = _engine(request).alerts(state=state, slo=slo)
    return {"alerts": items, "count": len(items)}


@router.get("/api/v1/alerts/dead-letters")
def dead_letters(
    request: Request, _: Annotated[Principal, Depends(require("viewer"))]
) -> dict[str, Any]:
    items = _engine(request).dead_letters()
    return {"deadLetters": items, "count": len(items)}


@router.post("/api/v1/alerts/dead-letters/{delivery_id}/requeue")
def requeue(
    request: Request, delivery_id: str, _: Annotated[Principal, Depends(require("operator"))]
) -> dict[str, Any]:
    try:
        return _engine(request).requeue(delivery_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get("/api/v1/silences")
def list_silences(
    request: Request,
    _: Annotated[Principal, Depends(require("operator"))],
    include_expired: bool = True,
) -> dict[str, Any]:
    items = _engine(request).list_silences(include_expired=include_expired)
    return {"silences": items, "count": len(items)}


@router.get("/api/v1/silences/{silence_id}")
def get_silence(
    request: Request, silence_id: str, _: Annotated[Principal, Depends(require("operator"))]
) -> dict[str, Any]:
    try:
        return _engine(request).get_silence(silence_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post("/api/v1/silences", status_code=201)
def create_silence(
    request: Request,
    principal: Annotated[Principal, Depends(require("operator"))],
    body: Annotated[Any, Body()],
) -> dict[str, Any]:
    try:
        return _engine(request).create_silence(
            body, created_by=f"{principal.role}:...{principal.token_hint}"
        )
    except InvalidInput as exc:
        raise HTTPException(400, f"invalid silence: {exc}") from exc


@router.delete("/api/v1/silences/{silence_id}")
def expire_silence(
    request: Request, silence_id: str, _: Annotated[Principal, Depends(require("operator"))]
) -> dict[str, Any]:
    try:
        return _engine(request).expire_silence(silence_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
