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

import numpy as np
import numpy.typing as npt

from controlplane.slo.burn import Counts
from controlplane.slo.hours import ColKey, HourCache, Series, bind_cols, selectors_sql
from controlplane.slo.spec import GAUGE_FIELDS, SLO
from controlplane.slo.statement import Rows, run_parts
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


class _Edges:
    """One rollup query answering many SLOs' edge minutes.

    The engine sums the (distinct) per-row good/total expressions per series and minute
    over the union of the windows' edge ranges; each window's sums are then taken here
    from those rows (a window is a set of minutes). So 100 SLOs cost one scan, and the
    SQL stays short whatever the number of SLOs and windows: its analysis, more than the
    rows it reads, is what an edge query costs (a per-window bitmask computed in SQL and
    one OR term per window range made it 25-40 ms slower).
    """

    def __init__(self, table: str, where: str, params: dict[str, Any], until: datetime) -> None:
        self.table, self.where, self.params = table, where, dict(params)
        self.until = until
        self.cols: dict[tuple[str, str, int], int] = {}  # (expr, param, value) -> column
        self.col_sql: list[str] = []
        self.windows: dict[tuple[datetime, datetime, datetime], int] = {}
        self.slos: list[tuple[tuple[str, str, str], list[int], int, int]] = []
        self.result: list[list[Counts]] = []

    def _col(self, expr: str, pname: str, value: int) -> int:
        key = (expr, pname, value)
        if key not in self.cols:
            n = len(self.cols)
            (sql,) = bind_cols([key], self.params, [n])
            self.col_sql.append(sql)
            self.cols[key] = n
        return self.cols[key]

    def window(self, s: datetime, h: datetime, tm: datetime) -> int:
        """Index of the window whose edge minutes are ``[s, h)`` and ``[tm, until)``
        (``s == h == tm``: the window is all minutes, ``[s, until)``)."""
        return self.windows.setdefault((s, h, tm), len(self.windows))

    def add(self, slo: SLO, windows: list[int]) -> int:
        good, total = _row_cols(slo)
        g, n = self._col(*good), self._col(*total)
        sel = slo.selector
        self.slos.append(((sel.pool, sel.model, sel.tenant), windows, g, n))
        return len(self.slos) - 1

    @property
    def width(self) -> int:
        return len(self.col_sql)

    def _ranges(self, params: dict[str, Any]) -> str:
        """The windows' edge minutes as few disjoint ranges (the last one ends at until)."""
        spans = sorted(
            r for s, h, tm in self.windows for r in ((s, h), (tm, self.until)) if r[0] < r[1]
        )
        merged: list[list[datetime]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        terms = []
        for k, (lo, hi) in enumerate(merged):
            params[f"ra{k}"] = lo
            if hi >= self.until:  # ``minute < until`` is in the WHERE already
                terms.append(f"minute >= {{ra{k}:DateTime('UTC')}}")
            else:
                params[f"rb{k}"] = hi
                terms.append(
                    f"(minute >= {{ra{k}:DateTime('UTC')}} AND minute < {{rb{k}:DateTime('UTC')}})"
                )
        return " OR ".join(terms) or "0"

    def select(self, params: dict[str, Any]) -> tuple[str, str]:
        """The edge rows: (pool, model, tenant, minute, column sums) per series and minute."""
        params |= self.params
        sums = ", ".join(f"toUInt64(sum({sql}))" for sql in self.col_sql)
        # Models and tenants no SLO selects are merged into '' (which only "any" matches):
        # fewer rows to match, e.g. 8 pools x 4 tenant values instead of x 50 tenants.
        dims = []
        for i, dim, alias in ((1, "model", "b"), (2, "tenant", "c")):
            params[f"keep_{dim}"] = sorted({sel[i] for sel, _, _, _ in self.slos if sel[i]})
            kept = f"if({dim} IN {{keep_{dim}:Array(String)}}, {dim}, '')"
            dims.append(f"toString({kept}) AS {alias}")
        # One flat SELECT: a subquery for the per-row expressions cost ~5 ms more analysis.
        ranges = self._ranges(params)
        return (
            f"toString(pool) AS a, {', '.join(dims)}, toUInt64(toUnixTimestamp(minute)) AS m,"
            f" {sums}",
            f"FROM {self.table} WHERE {self.where} AND ({ranges}) GROUP BY a, b, c, m",
        )

    def take(self, rows: Rows) -> None:
        dims, minute, vals = [rows.a, rows.b, rows.c], rows.key, rows.vals
        # in_window[w, row]: the row's minute is one of window w's edge minutes.
        bounds = np.array(
            [[int(t.timestamp()) for t in key] for key in self.windows], dtype=np.int64
        ).reshape(-1, 3)
        s, h, tm = (bounds[:, i : i + 1] for i in range(3))
        in_window = ((minute >= s) & (minute < h)) | (minute >= tm)
        per_sel: dict[tuple[str, str, str], npt.NDArray[np.int64]] = {}

        def sums(sel: tuple[str, str, str]) -> npt.NDArray[np.int64]:
            """Column sums per window over the rows the selector matches (memoized:
            SLOs sharing a selector share the work)."""
            if sel not in per_sel:
                rows = np.ones(len(minute), dtype=bool)
                for want, have in zip(sel, dims, strict=True):
                    if want:
                        rows &= have == want
                per_sel[sel] = in_window[:, rows].astype(np.int64) @ vals[rows]
            return per_sel[sel]

        out = []
        for sel, windows, g, n in self.slos:
            w = sums(sel)
            out.append([Counts(int(w[k, g]), int(w[k, n])) for k in windows])
        self.result = out


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
    the edges of all its SLOs."""
    cache = HourCache() if cache is None else cache
    tm = until.replace(minute=0, second=0, microsecond=0)
    edges: dict[str, _Edges] = {}  # per-minute table -> its SLOs' edge query
    for slo, _ in items:
        minute_table = tables(slo)[0]
        if minute_table not in edges:
            params: dict[str, Any] = {"until": until}
            own = (_selector(x) for x, _ in items if tables(x)[0] == minute_table)
            where = f"minute < {{until:DateTime('UTC')}} AND {selectors_sql(own, params)}"
            edges[minute_table] = _Edges(minute_table, where, params, until)
    plans = []
    by_table: dict[str, tuple[dict[ColKey, frozenset[Series]], list[datetime]]] = {}
    for slo, sinces in items:
        starts_h = [_ceil_hour(s) for s in sinces]
        minute_table, hour_table = tables(slo)
        edge = edges[minute_table]
        # Without whole hours (h >= tm) every minute of [s, until) is an edge minute.
        windows = [edge.window(s, h, tm) if h < tm else edge.window(s, s, s)
                   for s, h in zip(sinces, starts_h, strict=True)]  # fmt: skip
        plans.append((slo, minute_table, hour_table, starts_h, edge.add(slo, windows)))
        uses, starts = by_table.setdefault(hour_table, ({}, [tm]))
        for col in _row_cols(slo):
            uses[col] = uses.get(col, frozenset()) | {_selector(slo)}
        starts += starts_h
    # The hours' check first (its counts must predate the reads), then the edge minutes
    # and the hours to read in one statement.
    reads = cache.prepare(store, tm, {t: (uses, min(s)) for t, (uses, s) in by_table.items()})
    run_parts(store, [*edges.values(), *reads.parts])
    hours = reads.finish()
    out = []
    for slo, minute_table, hour_table, starts_h, ej in plans:
        sel, (good, total) = _selector(slo), _row_cols(slo)
        counts = []
        for h, c in zip(starts_h, edges[minute_table].result[ej], strict=True):
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
