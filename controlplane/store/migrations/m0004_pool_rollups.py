"""Pool-level rollups: the per-minute and per-hour rollups without the tenant dimension.

Most SLOs and reads select a pool (and maybe a model), not a tenant. Merging their
histograms from the tenant-level rollups means one map per tenant per hour (34k maps for
a pool over 28 days with 50 tenants); these tables hold one per pool and model per hour.
They have the same columns as ``requests_1m``/``requests_1h`` with ``tenant`` always
'' so every rollup query runs on either. Chained views fill them from the tenant-level
rollups' inserts (already aggregated blocks, so little extra insert work); existing rows
are copied once, only while a target is still empty, so re-running is harmless.
"""

from __future__ import annotations

from controlplane.store.migrations.m0001_initial import _rollup_table

_SUMS = """
    sum(requests) AS requests, sum(errors) AS errors,
    sumMap(ttft_hist) AS ttft_hist, sumMap(tpot_hist) AS tpot_hist,
    sumMap(e2e_hist) AS e2e_hist, sumMap(queue_hist) AS queue_hist,
    sumMap(tps_hist) AS tps_hist,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens, sum(cost_usd) AS cost_usd"""


def _select(source: str, bucket: str) -> str:
    return (
        f"SELECT {bucket}, pool, model, '' AS tenant, {_SUMS}\n"
        f"FROM {source} GROUP BY {bucket}, pool, model"
    )


def _statements(source: str, target: str, bucket: str) -> list[str]:
    return [
        _rollup_table(target, bucket),
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {target}_mv TO {target} AS "
        + _select(source, bucket),
        # Backfill rows written before this migration, once: only into an empty target.
        f"INSERT INTO {target} SELECT * FROM ({_select(source, bucket)}) "
        f"WHERE (SELECT count() FROM {target}) = 0",
    ]


STATEMENTS: list[str] = [
    *_statements("requests_1m", "requests_1m_pool", "minute"),
    *_statements("requests_1h", "requests_1h_pool", "hour"),
]
