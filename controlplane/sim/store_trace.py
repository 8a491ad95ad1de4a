"""Recorded traffic as a trace: ``requests`` rows between two times, for backtests."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane import conventions as cv
from controlplane.sim.errors import SimError
from controlplane.sim.traffic import Arrival, Trace
from controlplane.store.base import Store

_SQL = f"""
SELECT toUnixTimestamp64Micro(ts) AS ts_us, input_tokens, output_tokens, tenant, priority
FROM {cv.REQUESTS}
WHERE ts >= {{since:DateTime64(6, 'UTC')}} AND ts < {{until:DateTime64(6, 'UTC')}}
  AND input_tokens > 0 AND output_tokens > 0
  AND ({{pool:String}} = '' OR pool = {{pool:String}})
ORDER BY ts
"""


def parse_time(text: str, name: str) -> datetime:
    """RFC 3339 or unix seconds, as a UTC datetime; the error names the option."""
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SimError(f"{name}: expected RFC 3339 time or unix seconds, got {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _priority(value: str) -> int:
    # The store keeps priority as a label; numeric ones keep their order, others are 0.
    try:
        return int(value)
    except ValueError:
        return 0


def read_store_trace(store: Store, since: datetime, until: datetime, *, pool: str = "") -> Trace:
    if until <= since:
        raise SimError(f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})")
    res = store.query(_SQL, {"since": since, "until": until, "pool": pool})
    if not res.rows:
        raise SimError(
            f"no recorded requests between {since.isoformat()} and {until.isoformat()}"
            + (f" in pool {pool!r}" if pool else "")
        )
    t0 = int(res.rows[0][0])
    rows = tuple(
        Arrival((int(ts) - t0) / 1e6, int(i), int(o), str(tenant) or "default", _priority(str(p)))
        for ts, i, o, tenant, p in res.rows
    )
    start = datetime.fromtimestamp(t0 / 1e6, tz=UTC)
    return Trace(f"store:{since.isoformat()}..{until.isoformat()}", start, rows)
