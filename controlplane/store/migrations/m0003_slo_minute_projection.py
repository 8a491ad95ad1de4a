"""A time-ordered projection of ``requests_1m`` for the SLO engine's edge-minute reads.

``requests_1m`` is ordered by (pool, model, tenant, minute), so "the last 60 minutes of
every series" touches one or more granules per series: with hundreds of series that
is most of the table. The SLO evaluator reads exactly that every cycle (the minutes at
the edges of each window; whole hours come from ``requests_1h``). A projection ordered
by minute makes those reads a few contiguous granules; ClickHouse picks it by itself
when it reads fewer marks. ``rebuild`` keeps the projection consistent through the
AggregatingMergeTree's merges. Materializing covers rows inserted before this migration.
"""

from __future__ import annotations

STATEMENTS: list[str] = [
    "ALTER TABLE requests_1m MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'",
    "ALTER TABLE requests_1m ADD PROJECTION IF NOT EXISTS by_minute (SELECT * ORDER BY minute)",
    "ALTER TABLE requests_1m MATERIALIZE PROJECTION by_minute SETTINGS mutations_sync = 1",
]
