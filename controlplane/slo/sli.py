"""SLI reads: good/total counts for several windows ending at one instant, in one query.

All SLI SQL lives here. Request SLIs read only the rollups (``requests_1h`` for whole
hours, ``requests_1m`` for the minutes at the edges), never the raw ``requests`` table:
a 28-day window costs ~700 hourly rows per series. Every window ``[since_i, until)`` of
one SLO is answered by the same scan with conditional sums, so one SLO is one query.

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


def _occurrences(
    store: Store, slo: SLO, until: datetime, sinces: list[datetime]
) -> list[Counts]:
    good, total, params = row_exprs(slo)
    tm = until.replace(minute=0, second=0, microsecond=0)
    params |= {"pool": slo.selector.pool, "model": slo.selector.model,
               "tenant": slo.selector.tenant, "until": until, "tm": tm}  # fmt: skip
    aggs, ranges, hour_starts = [], [], []
    for i, s in enumerate(sinces):
        h = _ceil_hour(s)
        params[f"s{i}"], params[f"h{i}"] = s, h
        si, hi = f"{{s{i}:DateTime('UTC')}}", f"{{h{i}:DateTime('UTC')}}"
        if h < tm:  # whole hours in the middle come from requests_1h
            hour_starts.append(h)
            cond = (f"(hourly = 1 AND t >= {hi}) OR "
                    f"(hourly = 0 AND t >= {si} AND (t < {hi} OR t >= {{tm:DateTime('UTC')}}))")
            ranges.append(f"(minute >= {si} AND minute < {hi})")
        else:
            cond = f"hourly = 0 AND t >= {si}"
            ranges.append(f"minute >= {si}")
        aggs.append(f"sumIf(g, {cond}) AS g{i}, sumIf(n, {cond}) AS n{i}")
    ranges.append("minute >= {tm:DateTime('UTC')}")
    params["hlo"] = min(hour_starts) if hour_starts else tm
    sql = f"""
SELECT {", ".join(aggs)} FROM (
    SELECT 1 AS hourly, hour AS t, {good} AS g, {total} AS n FROM requests_1h
    WHERE {_SEL} AND hour >= {{hlo:DateTime('UTC')}} AND hour < {{tm:DateTime('UTC')}}
    UNION ALL
    SELECT 0 AS hourly, minute AS t, {good} AS g, {total} AS n FROM requests_1m
    WHERE {_SEL} AND minute < {{until:DateTime('UTC')}} AND ({" OR ".join(ranges)})
)"""
    row = store.query(sql, params).rows[0]
    return [Counts(int(row[2 * i] or 0), int(row[2 * i + 1] or 0)) for i in range(len(sinces))]


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
    store: Store, slo: SLO, until: datetime, sinces: Mapping[str, datetime]
) -> dict[str, Counts]:
    """Counts over ``[since, until)`` for each named window, minute-aligned, one query."""
    until = floor_minute(until)
    keys = list(sinces)
    starts = [min(floor_minute(sinces[k]), until) for k in keys]
    if slo.budgeting.method == "timeslices" or slo.sli.kind == "gauge":
        counts = _timeslices(store, slo, until, starts)
    else:
        counts = _occurrences(store, slo, until, starts)
    return dict(zip(keys, counts, strict=True))
