"""SLI reads: good/total counts for several windows ending at one instant.

All SLI SQL lives here and in ``hours.py``. Request SLIs read only the rollups, never
the raw ``requests`` table: whole hours from the hourly rollup (held between cycles by
``HourCache``), the minutes at the edges of each window from the per-minute rollup.
SLOs without a tenant selector read the pool-level rollups (``requests_1h_pool``,
``requests_1m_pool``: the same sums without the tenant dimension); SLOs that select a
tenant read the tenant-level ones. Every window ``[since_i, until)`` of every SLO on a
table is answered by one edge-minute query with conditional sums.

Gauge SLIs count good minutes (time slices) over ``gpu_samples``/``replica_samples``:
a slice is good when the share of samples meeting the condition is >= the slice target.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from controlplane.slo.burn import Counts
from controlplane.slo.hours import ColKey, HourCache, Series, selectors_sql
from controlplane.slo.spec import GAUGE_FIELDS, SLO
from controlplane.slo.statement import run_parts
from controlplane.store.base import Store, check_identifier
from controlplane.store.rollups import floor_minute, round_up_2sig

_HIST = {"ttft": "ttft_hist", "tpot": "tpot_hist", "e2e": "e2e_hist", "queue": "queue_hist"}
_SEL = (
    "({pool:String} = '' OR pool = {pool:String}) "
    "AND ({model:String} = '' OR model = {model:String}) "
    "AND ({tenant:String} = '' OR tenant = {tenant:String})"
)
_OPS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "=", "!=": "!="}


def _ceil_hour(t: datetime) -> datetime:
    h = t.replace(minute=0, second=0, microsecond=0)
    return h if h == t else h + timedelta(hours=1)


def row_exprs(slo: SLO) -> tuple[str, str, dict[str, Any]]:
    """Per-rollup-row SQL for (good, total) and the parameters they bind."""
    sli = slo.sli
    if sli.kind == "availability":
        return "requests - errors", "requests", {}
    if sli.kind == "latency":
        assert sli.metric is not None
        hist = _HIST[sli.metric]
        t_us = int(round(sli.threshold_s * 1e6))
        good = f"arraySum(mapValues(mapFilter((k, v) -> k <= {{thr:UInt32}}, {hist})))"
        return good, f"arraySum(mapValues({hist}))", {"thr": t_us}
    if sli.kind == "throughput":
        good = "arraySum(mapValues(mapFilter((k, v) -> k >= {floor:UInt32}, tps_hist)))"
        floor = int(round(sli.floor_tokens_per_s * 1000))
        return good, "arraySum(mapValues(tps_hist))", {"floor": floor}
    raise ValueError(f"{sli.kind} SLIs are not read from request rollups")


def latency_threshold_exact(threshold_s: float) -> bool:
    """True when the rollup histogram has a bucket bound exactly at the threshold."""
    t_us = int(round(threshold_s * 1e6))
    return round_up_2sig(t_us) == t_us


class _Batch:
    """One rollup query answering many SLOs' windows.

    Each row gets a bitmask of the (distinct) windows it falls in and the (distinct)
    per-row good/total expressions; the engine groups by series and mask, and the few
    resulting rows are matched to each SLO's selector and windows here. So 100 SLOs
    cost one scan, and the SQL stays short whatever the number of SLOs.
    """

    MAX_WINDOWS = 62  # bits of the UInt64 mask

    def __init__(self, table: str, where: str, params: dict[str, Any]) -> None:
        self.table, self.where, self.params = table, where, dict(params)
        self.cols: dict[tuple[str, str, int], int] = {}  # (expr, param, value) -> column
        self.col_sql: list[str] = []
        self.windows: dict[Any, int] = {}
        self.window_sql: list[tuple[str, str]] = []  # (condition, scan range)
        self.slos: list[tuple[tuple[str, str, str], list[int], int, int]] = []
        self.result: list[list[Counts]] = []

    def _col(self, expr: str, pname: str, value: int) -> int:
        key = (expr, pname, value)
        if key not in self.cols:
            n = len(self.cols)
            if pname:
                self.params[f"{pname}{n}"] = value
                expr = expr.replace("{" + pname + ":", "{" + f"{pname}{n}" + ":")
            self.col_sql.append(f"{expr} AS c{n}")
            self.cols[key] = n
        return self.cols[key]

    def window(self, key: Any, values: dict[str, datetime], cond: str, rng: str) -> int:
        """Bit of a window; ``cond``/``rng`` use ``{name}`` for each of ``values``."""
        if key not in self.windows:
            n = len(self.windows)
            names = {}
            for name, v in values.items():
                self.params[f"{name}{n}"] = v
                names[name] = f"{{{name}{n}:DateTime('UTC')}}"
            self.window_sql.append((cond.format(**names), rng.format(**names)))
            self.windows[key] = n
        return self.windows[key]

    def room(self, keys: set[Any]) -> bool:
        return len(self.windows) + len(keys - set(self.windows)) <= self.MAX_WINDOWS

    def add(self, slo: SLO, bits: list[int]) -> int:
        good, total = _row_cols(slo)
        g, n = self._col(*good), self._col(*total)
        sel = slo.selector
        self.slos.append(((sel.pool, sel.model, sel.tenant), bits, g, n))
        return len(self.slos) - 1

    @property
    def width(self) -> int:
        return len(self.col_sql)

    def select(self, params: dict[str, Any]) -> str:
        """The edge rows: (pool, model, tenant, mask, column sums) per series and mask."""
        params |= self.params
        ranges = " OR ".join(r for _, r in self.window_sql)
        mask = " + ".join(f"(toUInt64({c}) * {1 << k})" for k, (c, _) in enumerate(self.window_sql))
        sums = ", ".join(f"toUInt64(sum(c{i}))" for i in range(len(self.col_sql)))
        # Models and tenants no SLO selects are merged into '' (which only "any" matches):
        # fewer rows to match, e.g. 8 pools x 4 tenant values instead of x 50 tenants.
        dims = []
        for i, dim in ((1, "model"), (2, "tenant")):
            params[f"keep_{dim}"] = sorted({sel[i] for sel, _, _, _ in self.slos if sel[i]})
            dims.append(f"if({dim} IN {{keep_{dim}:Array(String)}}, {dim}, '') AS {dim}_k")
        return f"""
SELECT toString(pool), toString(model_k), toString(tenant_k), mask, {sums} FROM (
    SELECT pool, {", ".join(dims)}, {mask} AS mask, {", ".join(self.col_sql)}
    FROM {self.table} WHERE {self.where} AND ({ranges})
)
WHERE mask != 0
GROUP BY pool, model_k, tenant_k, mask"""

    def take(self, df: pd.DataFrame) -> None:
        rows = list(df.iloc[:, 1:].itertuples(index=False, name=None))
        by_pool: dict[str, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_pool.setdefault(r[0], []).append(r)
        ncols = len(self.col_sql)
        per_sel: dict[tuple[str, str, str], dict[int, list[int]]] = {}

        def masks(pool: str, model: str, tenant: str) -> dict[int, list[int]]:
            """Column sums per window mask over the rows a selector matches (memoized:
            SLOs sharing a selector share the work)."""
            key = (pool, model, tenant)
            if key not in per_sel:
                acc: dict[int, list[int]] = {}
                for r in by_pool.get(pool, []) if pool else rows:
                    if (model and r[1] != model) or (tenant and r[2] != tenant):
                        continue
                    col_sums = acc.setdefault(int(r[3]), [0] * ncols)
                    for c in range(ncols):
                        col_sums[c] += int(r[4 + c])
                per_sel[key] = acc
            return per_sel[key]

        out = []
        for sel, bits, g, n in self.slos:
            good = [0] * len(bits)
            total = [0] * len(bits)
            for m, col_sums in masks(*sel).items():
                for i, k in enumerate(bits):
                    if m >> k & 1:
                        good[i] += col_sums[g]
                        total[i] += col_sums[n]
            out.append([Counts(a, b) for a, b in zip(good, total, strict=True)])
        self.result = out


class _Batches:
    """Splits SLOs over as many ``_Batch`` queries as the window bits require."""

    def __init__(self, table: str, where: str, params: dict[str, Any]) -> None:
        self.args = (table, where, params)
        self.batches = [_Batch(*self.args)]

    def current(self, keys: set[Any]) -> tuple[int, _Batch]:
        if not self.batches[-1].room(keys):
            self.batches.append(_Batch(*self.args))
        return len(self.batches) - 1, self.batches[-1]

    def parts(self) -> list[_Batch]:
        return [b for b in self.batches if b.slos]

    def results(self) -> list[list[list[Counts]]]:
        return [b.result if b.slos else [] for b in self.batches]


# Minutes of a window [s, until) not covered by its whole hours [h, tm): condition, scan range.
_MINUTE_EDGE = (
    "minute >= {s} AND (minute < {h} OR minute >= {tm})",
    "(minute >= {s} AND minute < {h}) OR minute >= {tm}",
)


def tables(slo: SLO) -> tuple[str, str]:
    """(per-minute, per-hour) rollups an SLO reads: pool-level unless it selects a tenant.

    The pool-level tables hold the same sums without the tenant dimension (one row per
    pool, model and minute or hour instead of one per tenant too), so the answer is
    the same from fewer rows. Both per-minute tables have a minute-ordered projection
    (m0003, m0006), so the edge minutes of every series are a few contiguous granules."""
    suffix = "" if slo.selector.tenant else "_pool"
    return f"requests_1m{suffix}", f"requests_1h{suffix}"


def _row_cols(slo: SLO) -> tuple[ColKey, ColKey]:
    good, total, params = row_exprs(slo)
    ((pname, value),) = params.items() if params else (("", 0),)
    return (good, pname, value), (total, "", 0)


def _selector(slo: SLO) -> Series:
    sel = slo.selector
    return sel.pool, sel.model, sel.tenant


def occurrences_many(
    store: Store,
    until: datetime,
    items: list[tuple[SLO, list[datetime]]],
    cache: HourCache | None = None,
) -> list[list[Counts]]:
    """Counts per window for many SLOs ending at ``until``: each window ``[s, until)`` =
    whole hours ``[h, tm)`` (h = s rounded up to the hour, tm = until rounded down) from
    the SLO's hourly rollup, held in ``cache`` between calls (see ``hours.py``), + the
    minutes at both edges from the matching per-minute rollup: one query per table for
    the edges of all its SLOs (more when their windows exceed a query's mask bits)."""
    cache = HourCache() if cache is None else cache
    tm = until.replace(minute=0, second=0, microsecond=0)
    edges: dict[str, _Batches] = {}  # per-minute table -> its SLOs' edge queries
    for slo, _ in items:
        minute_table = tables(slo)[0]
        if minute_table not in edges:
            params: dict[str, Any] = {"until": until}
            own = (_selector(x) for x, _ in items if tables(x)[0] == minute_table)
            where = f"minute < {{until:DateTime('UTC')}} AND {selectors_sql(own, params)}"
            edges[minute_table] = _Batches(minute_table, where, params)
    plans = []
    by_table: dict[str, tuple[dict[ColKey, frozenset[Series]], list[datetime]]] = {}
    for slo, sinces in items:
        starts_h = [_ceil_hour(s) for s in sinces]
        keys = {(s, h) for s, h in zip(sinces, starts_h, strict=True)}
        minute_table, hour_table = tables(slo)
        eb, edge = edges[minute_table].current(keys)
        bits = []
        for s, h in zip(sinces, starts_h, strict=True):
            if h < tm:
                cond, rng = _MINUTE_EDGE
                bits.append(edge.window((s, h), {"s": s, "h": h, "tm": tm}, cond, rng))
            else:
                bits.append(edge.window((s, h), {"s": s}, "minute >= {s}", "minute >= {s}"))
        plans.append((slo, minute_table, hour_table, starts_h, eb, edge.add(slo, bits)))
        uses, starts = by_table.setdefault(hour_table, ({}, [tm]))
        for col in _row_cols(slo):
            uses[col] = uses.get(col, frozenset()) | {_selector(slo)}
        starts += starts_h
    # The hours' check first (its counts must predate the reads), then the edge minutes
    # and the hours to read in one statement.
    reads = cache.prepare(store, tm, {t: (uses, min(s)) for t, (uses, s) in by_table.items()})
    run_parts(store, [*(p for e in edges.values() for p in e.parts()), *reads.parts])
    edge_rows = {t: e.results() for t, e in edges.items()}
    hours = reads.finish()
    out = []
    for slo, minute_table, hour_table, starts_h, eb, ej in plans:
        sel, (good, total) = _selector(slo), _row_cols(slo)
        counts = []
        for h, c in zip(starts_h, edge_rows[minute_table][eb][ej], strict=True):
            if h < tm:
                w = hours[hour_table].window(sel, good, total, h, tm)
                c = Counts(c.good + w.good, c.total + w.total)
            counts.append(c)
        out.append(counts)
    return out


def _slice_aggs(sinces: list[datetime], params: dict[str, Any]) -> str:
    aggs = []
    for i, s in enumerate(sinces):
        params[f"s{i}"] = s
        si = f"{{s{i}:DateTime('UTC')}}"
        aggs.append(
            f"countIf(t >= {si} AND n > 0 AND g >= {{target:Float64}} * n) AS g{i}, "
            f"countIf(t >= {si} AND n > 0) AS n{i}"
        )
    return ", ".join(aggs)


def _timeslices(store: Store, slo: SLO, until: datetime, sinces: list[datetime]) -> list[Counts]:
    """Good slices / slices with events, from per-minute rollups."""
    params: dict[str, Any] = {
        "pool": slo.selector.pool, "model": slo.selector.model, "tenant": slo.selector.tenant,
        "until": until, "lo": min(sinces), "slice": slo.budgeting.slice_s,
        "target": slo.budgeting.slice_target,
    }  # fmt: skip
    aggs = _slice_aggs(sinces, params)
    if slo.sli.kind == "gauge":
        sli = slo.sli
        table = check_identifier(sli.source, "table")
        if sli.field not in GAUGE_FIELDS.get(table, frozenset()):
            raise ValueError(f"unknown gauge field {sli.field!r} of {table}")
        field = check_identifier(sli.field, "column")
        model = "AND ({model:String} = '' OR model = {model:String})" * (table == "replica_samples")
        params["v"] = sli.value
        inner = f"""
    SELECT toStartOfInterval(ts, toIntervalSecond({{slice:UInt32}})) AS t,
        countIf(toFloat64({field}) {_OPS[sli.op]} {{v:Float64}}) AS g, count() AS n
    FROM {table}
    WHERE ({{pool:String}} = '' OR pool = {{pool:String}}) {model}
      AND ts >= {{lo:DateTime('UTC')}} AND ts < {{until:DateTime('UTC')}} AND {field} IS NOT NULL
    GROUP BY t"""
    else:
        good, total, extra = row_exprs(slo)
        params |= extra
        inner = f"""
    SELECT toStartOfInterval(minute, toIntervalSecond({{slice:UInt32}})) AS t,
        sum({good}) AS g, sum({total}) AS n
    FROM {tables(slo)[0]}
    WHERE {_SEL} AND minute >= {{lo:DateTime('UTC')}} AND minute < {{until:DateTime('UTC')}}
    GROUP BY t"""
    row = store.query(f"SELECT {aggs} FROM ({inner})", params).rows[0]
    return [Counts(int(row[2 * i] or 0), int(row[2 * i + 1] or 0)) for i in range(len(sinces))]


def window_counts(
    store: Store,
    slo: SLO,
    until: datetime,
    sinces: Mapping[str, datetime],
    cache: HourCache | None = None,
) -> dict[str, Counts]:
    """Counts over ``[since, until)`` for each named window, minute-aligned, one query."""
    until = floor_minute(until)
    keys = list(sinces)
    starts = [min(floor_minute(sinces[k]), until) for k in keys]
    if slo.budgeting.method == "timeslices" or slo.sli.kind == "gauge":
        counts = _timeslices(store, slo, until, starts)
    else:
        (counts,) = occurrences_many(store, until, [(slo, starts)], cache)
    return dict(zip(keys, counts, strict=True))
