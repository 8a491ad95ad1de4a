"""SQL for reading request rows (the API's ``/api/v1/requests``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controlplane.store.base import Store

# Stored durations are microseconds; the API speaks milliseconds.
_SELECT = """
SELECT
    ts, pool, model, replica, tenant, priority, status, error_type, finish_reason,
    lower(hex(trace_id)) AS trace_id, lower(hex(span_id)) AS span_id,
    ttft_us / 1000 AS ttft_ms, tpot_us / 1000 AS tpot_ms, e2e_us / 1000 AS e2e_ms,
    queue_us / 1000 AS queue_ms, prefill_us / 1000 AS prefill_ms, decode_us / 1000 AS decode_ms,
    input_tokens, output_tokens, cached_tokens, output_tokens_per_s,
    toFloat64(cost_usd) AS cost_usd
FROM requests
WHERE ({pool:String} = '' OR pool = {pool:String})
  AND ts >= {since:DateTime64(6, 'UTC')} AND ts < {until:DateTime64(6, 'UTC')}
ORDER BY ts DESC
LIMIT {limit:UInt32}
"""

_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def list_requests(
    store: Store, *, pool: str, since: datetime, until: datetime, limit: int
) -> list[dict[str, Any]]:
    res = store.query(_SELECT, {"pool": pool, "since": since, "until": until, "limit": limit})
    out = []
    for row in res.dicts():
        row["ts"] = row["ts"].isoformat().replace("+00:00", "Z")
        if row["trace_id"] == _ZERO_TRACE:
            row["trace_id"] = ""
        if row["span_id"] == _ZERO_SPAN:
            row["span_id"] = ""
        out.append(row)
    return out
