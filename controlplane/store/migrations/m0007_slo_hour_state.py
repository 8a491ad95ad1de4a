"""``slo_hour_state``: the SLO engine's held hours, saved so a restart need not re-read them.

One row per hourly rollup table, column signature and hour: the request count the hour
had when read (the held hours' check compares it) and the sums of each series with any
(``vals``: series-major, one value per column). Derived data: a missing row only means
the hour is read from the rollups again (``controlplane/slo/hour_state.py``). Re-reading
an hour (late rows) writes a newer row; ``FINAL`` keeps the newest. Rows expire 45 days
after they were written, so signatures no SLO uses any more disappear.
"""

from __future__ import annotations

STATEMENTS: list[str] = [
    """
CREATE TABLE IF NOT EXISTS slo_hour_state (
    source LowCardinality(String),
    signature String,
    hour DateTime64(0, 'UTC'),  -- not DateTime: chDB returns DateTime as a bare integer
    requests UInt64,
    pools Array(LowCardinality(String)),
    models Array(LowCardinality(String)),
    tenants Array(LowCardinality(String)),
    vals Array(Int64) CODEC(ZSTD(1)),
    saved_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(saved_at)
ORDER BY (source, signature, hour)
TTL toDateTime(saved_at) + INTERVAL 45 DAY
""",
]
