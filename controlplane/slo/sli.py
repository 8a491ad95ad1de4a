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


def _occurrences(
    store: Store, slo: SLO, until: datetime, sinces: list[datetime], cache: HourCache | None
) -> list[Counts]:
    """Each window ``[s, until)`` = whole hours ``[h, tm)`` from ``requests_1h`` (h = s
    rounded up to the hour, tm = until rounded down) + the minutes at both edges."""
    tm = until.replace(minute=0, second=0, microsecond=0)
    hour_of = [_ceil_hour(s) for s in sinces]
    hourly: dict[datetime, Counts] = {}
    missing = []
    for h in sorted({h for h in hour_of if h < tm}):
        c = cache.get(slo, h, tm) if cache is not None else None
        if c is None:
            missing.append(h)
        else:
            hourly[h] = c
    if missing:
        for h, c in zip(missing, _hours(store, slo, tm, missing), strict=True):
            hourly[h] = c
            if cache is not None:
                cache.put(slo, h, tm, c)
    good, total, params = row_exprs(slo)
    params |= {"pool": slo.selector.pool, "model": slo.selector.model,
               "tenant": slo.selector.tenant, "until": until, "tm": tm}  # fmt: skip
    aggs, ranges = [], ["minute >= {tm:DateTime('UTC')}"]
    for i, (s, h) in enumerate(zip(sinces, hour_of, strict=True)):
        params[f"s{i}"], params[f"h{i}"] = s, h
        si, hi = f"{{s{i}:DateTime('UTC')}}", f"{{h{i}:DateTime('UTC')}}"
        if h < tm:  # only the edges: [s, h) and [tm, until)
            cond = f"minute >= {si} AND (minute < {hi} OR minute >= {{tm:DateTime('UTC')}})"
            ranges.append(f"(minute >= {si} AND minute < {hi})")
        else:
            cond = f"minute >= {si}"
            ranges.append(cond)
        aggs.append(f"sumIf(g, {cond}), sumIf(n, {cond})")
    sql = f"""
SELECT {", ".join(aggs)} FROM (
    SELECT minute, {good} AS g, {total} AS n FROM requests_1m
    WHERE {_SEL} AND minute < {{until:DateTime('UTC')}} AND ({" OR ".join(ranges)})
)"""
    row = store.query(sql, params).rows[0]
    out = []
    for i, h in enumerate(hour_of):
        c = Counts(int(row[2 * i] or 0), int(row[2 * i + 1] or 0))
        if h < tm:
            c = Counts(c.good + hourly[h].good, c.total + hourly[h].total)
        out.append(c)
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


def _timeslices(
    store: Store, slo: SLO, until: datetime, sinces: list[datetime]
) -> list[Counts]:
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
        model = "AND ({model:String} = '' OR model = {model:String})" * (
            table == "replica_samples"
        )
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
        counts = _occurrences(store, slo, until, starts, cache)
    return dict(zip(keys, counts, strict=True))
