"""SQL for ``slo_evaluations``: writing results, the latest per SLO, and history."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from controlplane import conventions as cv
from controlplane.store.base import Store

COLUMNS = (
    "ts", "slo", "pool", "state", "sli", "good", "total", "objective",
    "budget_remaining", "burn_rates", "detail",
)  # fmt: skip


def write(store: Store, rows: Sequence[Sequence[Any]]) -> None:
    store.insert_rows(cv.SLO_EVALUATIONS, COLUMNS, rows)


_LATEST = """
SELECT slo, argMax(tuple(ts, state, sli, good, total, objective, budget_remaining,
                         burn_rates, detail), ts) AS last
FROM slo_evaluations
WHERE ({slo:String} = '' OR slo = {slo:String})
GROUP BY slo
"""

_HISTORY = """
SELECT ts, state, sli, good, total, budget_remaining, burn_rates, detail
FROM slo_evaluations
WHERE slo = {slo:String}
  AND ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
ORDER BY ts
LIMIT {limit:UInt32}
"""


def _row(ts: datetime, state: str, sli: float | None, good: int, total: int,
         budget: float | None, burn: Any, detail: str) -> dict[str, Any]:  # fmt: skip
    d = json.loads(detail) if detail else {}
    return {
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "state": state,
        "sli": sli,
        "good": int(good),
        "total": int(total),
        "budget_remaining": budget,
        "burn_rates": dict(burn) if not isinstance(burn, dict) else burn,
        "time_to_exhaustion_s": d.get("time_to_exhaustion_s"),
        "tiers": d.get("tiers", []),
        "error": d.get("error", ""),
    }


def latest(store: Store, slo: str = "") -> dict[str, dict[str, Any]]:
    """The most recent evaluation of each SLO (or of one), keyed by SLO name."""
    out = {}
    for name, last in store.query(_LATEST, {"slo": slo}).rows:
        ts, state, sli, good, total, _obj, budget, burn, detail = (
            last.values() if isinstance(last, dict) else last
        )
        out[name] = _row(ts, state, sli, good, total, budget, burn, detail)
    return out


def history(
    store: Store, slo: str, since: datetime, until: datetime, limit: int = 10000
) -> list[dict[str, Any]]:
    res = store.query(_HISTORY, {"slo": slo, "since": since, "until": until, "limit": limit})
    return [_row(*r) for r in res.rows]
