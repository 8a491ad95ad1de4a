"""SLI reads: good/total counts for several windows ending at one instant, in one query.

All SLI SQL lives here. Request SLIs read only the rollups (``requests_1h`` for whole
hours, ``requests_1m`` for the minutes at the edges), never the raw ``requests`` table:
a 28-day window costs ~700 hourly rows per series. Every window ``[since_i, until)`` of
one SLO is answered by the same scan with conditional sums, and the whole hours are
cached until the hour turns, so one SLO is one small query per cycle.

Gauge SLIs count good minutes (time slices) over ``gpu_samples``/``replica_samples``:
a slice is good when the share of samples meeting the condition is >= the slice target.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from controlplane.slo.burn import Counts
from controlplane.slo.spec import GAUGE_FIELDS, SLO
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


class HourCache:
    """Whole-hour sums per (SLO, first hour, last hour): they change only when the hour
    turns, so a 28-day window re-reads ~700 hourly rows per series once an hour instead
    of every cycle. Rows arriving for an hour already cached (later than the evaluation
    offset allows) are counted when the hour turns and the entry is recomputed."""

    def __init__(self) -> None:
        self._sums: dict[tuple[SLO, datetime, datetime], Counts] = {}
        self.hits = 0
        self.misses = 0

    def get(self, slo: SLO, h: datetime, tm: datetime) -> Counts | None:
        c = self._sums.get((slo, h, tm))
        if c is None:
            self.misses += 1
        else:
            self.hits += 1
        return c

    def put(self, slo: SLO, h: datetime, tm: datetime, c: Counts) -> None:
        # Entries of an earlier hour can never be asked for again: drop them.
        stale = [k for k in self._sums if k[2] != tm]
        for k in stale:
            del self._sums[k]
        self._sums[(slo, h, tm)] = c


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
        good, total, params = row_exprs(slo)
        ((pname, value),) = params.items() if params else (("", 0),)
        g, n = self._col(good, pname, value), self._col(total, "", 0)
        sel = slo.selector
        self.slos.append(((sel.pool, sel.model, sel.tenant), bits, g, n))
        return len(self.slos) - 1

    def run(self, store: Store) -> list[list[Counts]]:
        ranges = " OR ".join(r for _, r in self.window_sql)
        mask = " + ".join(f"(toUInt64({c}) * {1 << k})" for k, (c, _) in enumerate(self.window_sql))
        sums = ", ".join(f"sum(c{i})" for i in range(len(self.col_sql)))
        sql = f"""
SELECT pool, model, tenant, mask, {sums} FROM (
    SELECT pool, model, tenant, {mask} AS mask, {", ".join(self.col_sql)} FROM {self.table}
    WHERE {self.where} AND ({ranges})
)
WHERE mask != 0
GROUP BY pool, model, tenant, mask"""
        rows = store.query(sql, self.params).rows
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
                    col_sums = acc.setdefault(r[3], [0] * ncols)
                    for c in range(ncols):
                        col_sums[c] += int(r[4 + c] or 0)
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
        return out


class _Batches:
    """Splits SLOs over as many ``_Batch`` queries as the window bits require."""

    def __init__(self, table: str, where: str, params: dict[str, Any]) -> None:
        self.args = (table, where, params)
        self.batches = [_Batch(*self.args)]

    def current(self, keys: set[Any]) -> tuple[int, _Batch]:
        if not self.batches[-1].room(keys):
            self.batches.append(_Batch(*self.args))
        return len(self.batches) - 1, self.batches[-1]

    def run(self, store: Store) -> list[list[list[Counts]]]:
        return [b.run(store) if b.slos else [] for b in self.batches]


# Minutes of a window [s, until) not covered by its whole hours [h, tm): condition, scan range.
_MINUTE_EDGE = (
    "minute >= {s} AND (minute < {h} OR minute >= {tm})",
    "(minute >= {s} AND minute < {h}) OR minute >= {tm}",
)


def occurrences_many(
    store: Store,
    until: datetime,
    items: list[tuple[SLO, list[datetime]]],
    cache: HourCache | None = None,
) -> list[list[Counts]]:
    """Counts per window for many SLOs ending at ``until``: each window ``[s, until)`` =
    whole hours ``[h, tm)`` from ``requests_1h`` (h = s rounded up to the hour, tm =
    until rounded down; cached until the hour turns) + the minutes at both edges from
    ``requests_1m``. One query for the edges of all SLOs, one for the hours not cached."""
    tm = until.replace(minute=0, second=0, microsecond=0)
    tmp = {"tm": tm}
    edges = _Batches("requests_1m", "minute < {until:DateTime('UTC')}", {"until": until})
    hours = _Batches("requests_1h", "hour < {tm:DateTime('UTC')}", {"tm": tm})
    plans = []
    for slo, sinces in items:
        starts_h = [_ceil_hour(s) for s in sinces]
        keys = {(s, h) for s, h in zip(sinces, starts_h, strict=True)}
        eb, edge = edges.current(keys)
        bits = []
        for s, h in zip(sinces, starts_h, strict=True):
            if h < tm:
                cond, rng = _MINUTE_EDGE
                bits.append(edge.window((s, h), {"s": s, "h": h, "tm": tm}, cond, rng))
            else:
                bits.append(edge.window((s, h), {"s": s}, "minute >= {s}", "minute >= {s}"))
        edge_ref = (eb, edge.add(slo, bits))
        cached: dict[datetime, Counts] = {}
        missing = []
        for h in sorted({h for h in starts_h if h < tm}):
            c = cache.get(slo, h, tm) if cache is not None else None
            if c is None:
                missing.append(h)
            else:
                cached[h] = c
        hour_ref = None
        if missing:
            hb, hour = hours.current(set(missing))
            hbits = [hour.window(h, {"h": h} | tmp, "hour >= {h}", "hour >= {h}") for h in missing]
            hour_ref = (hb, hour.add(slo, hbits), missing)
        plans.append((slo, starts_h, cached, edge_ref, hour_ref))
    edge_rows, hour_rows = edges.run(store), hours.run(store)
    out = []
    for slo, starts_h, cached, (eb, ej), hour_ref in plans:
        if hour_ref is not None:
            hb, hj, missing = hour_ref
            for h, c in zip(missing, hour_rows[hb][hj], strict=True):
                cached[h] = c
                if cache is not None:
                    cache.put(slo, h, tm, c)
        counts = []
        for h, c in zip(starts_h, edge_rows[eb][ej], strict=True):
            if h < tm:
                c = Counts(c.good + cached[h].good, c.total + cached[h].total)
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
    FROM requests_1m
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
