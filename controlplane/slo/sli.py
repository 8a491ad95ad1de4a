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


def _hours(store: Store, slo: SLO, tm: datetime, starts: list[datetime]) -> list[Counts]:
    """Sums of ``requests_1h`` over ``[h, tm)`` for each ``h`` in ``starts``, one query."""
    good, total, params = row_exprs(slo)
    params |= {"pool": slo.selector.pool, "model": slo.selector.model,
               "tenant": slo.selector.tenant, "tm": tm, "hlo": min(starts)}  # fmt: skip
    aggs = []
    for i, h in enumerate(starts):
        params[f"h{i}"] = h
        cond = f"hour >= {{h{i}:DateTime('UTC')}}"
        aggs.append(f"sumIf(g, {cond}), sumIf(n, {cond})")
    sql = f"""
SELECT {", ".join(aggs)} FROM (
    SELECT hour, {good} AS g, {total} AS n FROM requests_1h
    WHERE {_SEL} AND hour >= {{hlo:DateTime('UTC')}} AND hour < {{tm:DateTime('UTC')}}
)"""
    row = store.query(sql, params).rows[0]
    return [Counts(int(row[2 * i] or 0), int(row[2 * i + 1] or 0)) for i in range(len(starts))]


def _hourly_parts(
    store: Store, slo: SLO, tm: datetime, hours: list[datetime], cache: HourCache | None
) -> dict[datetime, Counts]:
    out: dict[datetime, Counts] = {}
    missing = []
    for h in sorted({h for h in hours if h < tm}):
        c = cache.get(slo, h, tm) if cache is not None else None
        if c is None:
            missing.append(h)
        else:
            out[h] = c
    if missing:
        for h, c in zip(missing, _hours(store, slo, tm, missing), strict=True):
            out[h] = c
            if cache is not None:
                cache.put(slo, h, tm, c)
    return out


class _Edges:
    """One ``requests_1m`` query for the edge minutes of many SLOs' windows.

    Each row gets a bitmask of the (distinct) windows it falls in and the (distinct)
    per-row good/total expressions; the engine groups by series and mask, and the few
    resulting rows are matched to each SLO's selector and windows here. So 100 SLOs
    cost one small scan, and the SQL stays short whatever the number of SLOs.
    """

    MAX_WINDOWS = 62  # bits of the UInt64 mask

    def __init__(self, until: datetime, tm: datetime) -> None:
        self.params: dict[str, Any] = {"until": until, "tm": tm}
        self.cols: dict[tuple[str, str, int], int] = {}  # (expr, param, value) -> column
        self.col_sql: list[str] = []
        self.windows: dict[tuple[datetime, datetime], int] = {}
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

    def _window(self, s: datetime, h: datetime) -> int:
        if (s, h) not in self.windows:
            n = len(self.windows)
            self.params[f"s{n}"], self.params[f"h{n}"] = s, h
            si, hi = f"{{s{n}:DateTime('UTC')}}", f"{{h{n}:DateTime('UTC')}}"
            if h < self.params["tm"]:  # only the edges: [s, h) and [tm, until)
                cond = f"minute >= {si} AND (minute < {hi} OR minute >= {{tm:DateTime('UTC')}})"
                rng = f"(minute >= {si} AND minute < {hi})"
            else:
                cond = rng = f"minute >= {si}"
            self.window_sql.append((cond, rng))
            self.windows[(s, h)] = n
        return self.windows[(s, h)]

    def fits(self, starts: list[datetime], hours: list[datetime]) -> bool:
        new = {(s, h) for s, h in zip(starts, hours, strict=True)} - set(self.windows)
        return len(self.windows) + len(new) <= self.MAX_WINDOWS

    def add(self, slo: SLO, starts: list[datetime], hours: list[datetime]) -> int:
        good, total, params = row_exprs(slo)
        ((pname, value),) = params.items() if params else (("", 0),)
        g, n = self._col(good, pname, value), self._col(total, "", 0)
        bits = [self._window(s, h) for s, h in zip(starts, hours, strict=True)]
        sel = slo.selector
        self.slos.append(((sel.pool, sel.model, sel.tenant), bits, g, n))
        return len(self.slos) - 1

    def run(self, store: Store) -> list[list[Counts]]:
        ranges = ["minute >= {tm:DateTime('UTC')}"] + [r for _, r in self.window_sql]
        mask = " + ".join(f"(toUInt64({c}) * {1 << k})" for k, (c, _) in enumerate(self.window_sql))
        sums = ", ".join(f"sum(c{i})" for i in range(len(self.col_sql)))
        sql = f"""
SELECT pool, model, tenant, mask, {sums} FROM (
    SELECT pool, model, tenant, {mask} AS mask, {", ".join(self.col_sql)} FROM requests_1m
    WHERE minute < {{until:DateTime('UTC')}} AND ({" OR ".join(ranges)})
)
WHERE mask != 0
GROUP BY pool, model, tenant, mask"""
        rows = store.query(sql, self.params).rows
        out = []
        for (pool, model, tenant), bits, g, n in self.slos:
            good = [0] * len(bits)
            total = [0] * len(bits)
            for r in rows:
                if (
                    (pool and r[0] != pool)
                    or (model and r[1] != model)
                    or (tenant and r[2] != tenant)
                ):
                    continue
                m = r[3]
                for i, k in enumerate(bits):
                    if m >> k & 1:
                        good[i] += int(r[4 + g] or 0)
                        total[i] += int(r[4 + n] or 0)
            out.append([Counts(a, b) for a, b in zip(good, total, strict=True)])
        return out


def occurrences_many(
    store: Store,
    until: datetime,
    items: list[tuple[SLO, list[datetime]]],
    cache: HourCache | None = None,
) -> list[list[Counts]]:
    """Counts per window for many SLOs ending at ``until``: each window ``[s, until)`` =
    whole hours ``[h, tm)`` from ``requests_1h`` (h = s rounded up to the hour, tm =
    until rounded down; cached) + the minutes at both edges (one query for all SLOs)."""
    tm = until.replace(minute=0, second=0, microsecond=0)
    batches: list[_Edges] = [_Edges(until, tm)]
    plans = []
    for slo, sinces in items:
        hours = [_ceil_hour(s) for s in sinces]
        hourly = _hourly_parts(store, slo, tm, hours, cache)
        if not batches[-1].fits(sinces, hours):
            batches.append(_Edges(until, tm))
        plans.append((hours, hourly, len(batches) - 1, batches[-1].add(slo, sinces, hours)))
    results = [b.run(store) for b in batches]
    out = []
    for hours, hourly, b, j in plans:
        counts = []
        for h, c in zip(hours, results[b][j], strict=True):
            if h < tm:
                c = Counts(c.good + hourly[h].good, c.total + hourly[h].total)
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
