"""A minute-ordered projection of ``requests_1m_pool`` with small granules.

SLOs without a tenant selector (most of them) read the minutes at the edges of their
windows from the pool-level per-minute rollup: one row per pool and model per minute
instead of one per tenant too. Ordered by series only, "these minute ranges of every
series" costs a granule per series per range; ordered by minute, a few contiguous
granules. Rows carry five histogram maps, so a default granule (up to 8192 rows or
10 MB) is far more than an edge needs: 256-row granules halve the read at 100M rows
(BENCHMARKS.md, "SLO evaluation"). ``requests_1m``'s projection (m0003) keeps the
default: with a row per tenant, its edge reads were slower with small granules (the
index analysis of 30x more marks outweighs the rows saved).
"""

from __future__ import annotations

STATEMENTS: list[str] = [
    "ALTER TABLE requests_1m_pool MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'",
    "ALTER TABLE requests_1m_pool ADD PROJECTION IF NOT EXISTS by_minute "
    "(SELECT * ORDER BY minute) WITH SETTINGS (index_granularity = 256)",
    "ALTER TABLE requests_1m_pool MATERIALIZE PROJECTION by_minute SETTINGS mutations_sync = 1",
]
