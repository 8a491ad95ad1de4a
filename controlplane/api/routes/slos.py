"""SLO status, history and on-demand evaluation: ``/api/v1/slos``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from controlplane.api.auth import Principal, require
from controlplane.api.params import parse_time
from controlplane.clock import utc
from controlplane.slo import results
from controlplane.slo.evaluate import Evaluation, Evaluator
from controlplane.slo.scheduler import SERVICE
from controlplane.slo.spec import SLO
from controlplane.slo.windows import format_duration

router = APIRouter()


def _evaluator(request: Request) -> Evaluator:
    ev: Evaluator | None = request.app.state.ctx.services.get(SERVICE)
    if ev is None:
        raise HTTPException(503, "the SLO engine is not running in this server")
    return ev


def _slo(ev: Evaluator, name: str) -> SLO:
    slo = ev.slos.get(name)
    if slo is None:
        known = ", ".join(sorted(ev.slos)) or "none configured"
        raise HTTPException(404, f"unknown SLO {name!r} (known: {known})")
    return slo


def _firing(request: Request, name: str) -> list[dict[str, Any]]:
    alerts = request.app.state.ctx.services.get("alerts")
    if alerts is None:
        return []
    firing: list[dict[str, Any]] = alerts.firing(name)
    return firing


def _describe(slo: SLO) -> dict[str, Any]:
    sli = slo.sli
    return {
        "name": slo.name,
        "description": slo.description,
        "selector": {"pool": slo.selector.pool, "model": slo.selector.model,
                     "tenant": slo.selector.tenant},
        "objective": slo.objective,
        "window": slo.window.label,
        "budgeting": slo.budgeting.method,
        "sli_kind": sli.kind,
        "tiers": [
            {"name": t.name, "severity": t.severity, "long": format_duration(t.long_s),
             "short": format_duration(t.short_s), "factor": t.factor}
            for t in slo.alerting.tiers
        ],
    }  # fmt: skip


def _status(slo: SLO, last: dict[str, Any] | None, firing: list[dict[str, Any]]) -> dict[str, Any]:
    out = _describe(slo)
    last = last or {}
    out |= {
        "state": last.get("state", "unknown"),
        "sli": last.get("sli"),
        "budget_remaining": last.get("budget_remaining"),
        "burn_rates": last.get("burn_rates", {}),
        "time_to_exhaustion_s": last.get("time_to_exhaustion_s"),
        "evaluated_at": last.get("ts"),
        "good": last.get("good"),
        "total": last.get("total"),
        "firing_alerts": firing,
    }
    return out


def _from_evaluation(ev: Evaluation) -> dict[str, Any]:
    return {
        "ts": utc(ev.evaluated_at).isoformat().replace("+00:00", "Z"),
        "state": ev.state, "sli": ev.sli, "budget_remaining": ev.budget_remaining,
        "burn_rates": ev.burn_rates, "time_to_exhaustion_s": ev.time_to_exhaustion_s,
        "good": ev.good, "total": ev.total,
    }  # fmt: skip


def _latest(ev: Evaluator, request: Request, name: str = "") -> dict[str, dict[str, Any]]:
    """In-memory results of this process, else the newest stored row (after a restart)."""
    stored = results.latest(request.app.state.ctx.store, name)
    for slo_name, e in ev.latest.items():
        stored[slo_name] = _from_evaluation(e)
    return stored


@router.get("/api/v1/slos")
def list_slos(
    request: Request, _: Annotated[Principal, Depends(require("viewer"))]
) -> dict[str, Any]:
    ev = _evaluator(request)
    last = _latest(ev, request)
    slos = [_status(s, last.get(n), _firing(request, n)) for n, s in sorted(ev.slos.items())]
    return {"slos": slos, "count": len(slos)}


@router.post("/api/v1/slos/evaluate")
def evaluate_now(
    request: Request, _: Annotated[Principal, Depends(require("operator"))]
) -> dict[str, Any]:
    ev = _evaluator(request)
    done = ev.run_once()
    return {"evaluated": len(done), "results": {e.slo: _from_evaluation(e) for e in done}}


@router.get("/api/v1/slos/{name}")
def get_slo(
    name: str, request: Request, _: Annotated[Principal, Depends(require("viewer"))]
) -> dict[str, Any]:
    ev = _evaluator(request)
    slo = _slo(ev, name)
    return _status(slo, _latest(ev, request, name).get(name), _firing(request, name))


@router.get("/api/v1/slos/{name}/history")
def slo_history(
    name: str,
    request: Request,
    _: Annotated[Principal, Depends(require("viewer"))],
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100000)] = 10000,
) -> dict[str, Any]:
    ev = _evaluator(request)
    _slo(ev, name)
    end = parse_time(until, "until") or utc(ev.clock.now())
    start = parse_time(since, "since") or end - timedelta(hours=24)
    if start >= end:
        raise HTTPException(400, f"since ({start.isoformat()}) must be before until "
                            f"({end.isoformat()})")  # fmt: skip
    points = results.history(request.app.state.ctx.store, name, start, end, limit)
    return {"slo": name, "since": start.isoformat(), "until": end.isoformat(), "points": points}
