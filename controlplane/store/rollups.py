"""Reading request rollups: good/total counts, percentiles and sums over any window.

A window ``[since, until)`` is split into whole hours (read from ``requests_1h``) and the
minutes at either edge (``requests_1m``), so a 28-day window reads ~700 hourly rows per
series instead of millions of raw rows. Windows are minute-aligned: ``since`` and
``until`` are floored to the minute.

Latency histograms key each request by its value rounded *up* to two significant
digits (microseconds). ``good`` = requests whose bucket bound <= threshold, which is
exact when the threshold has two significant digits; otherwise ``ambiguous`` counts the
requests in the one bucket that straddles the threshold (the error bar).

``RollupCache`` (optional, per process) holds the closed part of a window between reads:
the merged whole hours and the per-minute rows of the hour the window starts in. A read
through it asks the store only for what it does not hold and for the minutes since the
last whole hour, in one statement that also checks ``system.parts`` for rows that arrived
late into held buckets (see the class).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from controlplane.store.base import Store

LatencyMetric = Literal["ttft", "tpot", "e2e", "queue"]
_HIST = {"ttft": "ttft_hist", "tpot": "tpot_hist", "e2e": "e2e_hist", "queue": "queue_hist"}


@dataclass(frozen=True)
class Selector:
    """Which series: empty string means any."""

    pool: str = ""
    model: str = ""
    tenant: str = ""


@dataclass(frozen=True)
class GoodTotal:
    good: int
    total: int
    ambiguous: int = 0  # requests in the bucket straddling the threshold (not in good)

    @property
    def ratio(self) -> float | None:
        return self.good / self.total if self.total else None


def floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _ceil_hour(t: datetime) -> datetime:
    h = t.replace(minute=0, second=0, microsecond=0)
    return h if h == t else h + timedelta(hours=1)


def _split(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """Hour-aligned middle ``[h0, h1)``; empty (h0 == h1) when none fits."""
    h0, h1 = _ceil_hour(since), until.replace(minute=0, second=0, microsecond=0)
    if h0 >= h1:
        return since, since
    return h0, h1


def _union(columns: str, sel: Selector) -> str:
    """Rows of the window from both rollups; ``columns`` are aggregate-state columns.

    Without a tenant in the selector, the pool-level rollups (no tenant dimension) answer
    with far fewer rows to merge."""
    suffix = "_pool" if not sel.tenant else ""
    where = (
        "({pool:String} = '' OR pool = {pool:String}) "
        "AND ({model:String} = '' OR model = {model:String}) "
        "AND ({tenant:String} = '' OR tenant = {tenant:String})"
    )
    return f"""
SELECT {columns} FROM requests_1h{suffix}
WHERE {where} AND hour >= {{h0:DateTime('UTC')}} AND hour < {{h1:DateTime('UTC')}}
UNION ALL
SELECT {columns} FROM requests_1m{suffix}
WHERE {where} AND minute >= {{since:DateTime('UTC')}} AND minute < {{until:DateTime('UTC')}}
  AND NOT (minute >= {{h0:DateTime('UTC')}} AND minute < {{h1:DateTime('UTC')}})
"""


def _params(sel: Selector, since: datetime, until: datetime) -> dict[str, Any]:
    since, until = floor_minute(since), floor_minute(until)
    h0, h1 = _split(since, until)
    return {
        "pool": sel.pool, "model": sel.model, "tenant": sel.tenant,
        "since": since, "until": until, "h0": h0, "h1": h1,
    }  # fmt: skip


def latency_good_total(
    store: Store,
    sel: Selector,
    metric: LatencyMetric,
    threshold_s: float,
    since: datetime,
    until: datetime,
    cache: RollupCache | None = None,
) -> GoodTotal:
    """Successful requests with ``metric`` <= threshold, out of those that reported it."""
    hist = _HIST[metric]
    t_us = int(round(threshold_s * 1e6))
    if cache is not None:
        (vec,) = cache.window(store, sel, [hist], since, until)
        return latency_from_vector(vec, t_us)
    sql = f"""
SELECT
    arraySum(mapValues(mapFilter((k, v) -> k <= {{t:UInt32}}, h))) AS good,
    arraySum(mapValues(h)) AS total,
    arraySum(mapValues(mapFilter((k, v) -> k = {{b:UInt32}} AND k != {{t:UInt32}}, h))) AS amb
FROM (SELECT sumMap(m) AS h FROM ({_union(f"{hist} AS m", sel)}))
"""
    params = _params(sel, since, until) | {"t": t_us, "b": round_up_2sig(t_us)}
    good, total, amb = store.query(sql, params).rows[0]
    return GoodTotal(int(good or 0), int(total or 0), int(amb or 0))


def throughput_good_total(
    store: Store,
    sel: Selector,
    floor_tokens_per_s: float,
    since: datetime,
    until: datetime,
    cache: RollupCache | None = None,
) -> GoodTotal:
    """Successful requests with output tokens/s >= floor, out of those that reported it."""
    if cache is not None:
        (vec,) = cache.window(store, sel, ["tps_hist"], since, until)
        good = vec[_BOUNDS >= int(round(floor_tokens_per_s * 1000))].sum()
        return GoodTotal(int(good), int(vec.sum()))
    sql = f"""
SELECT
    arraySum(mapValues(mapFilter((k, v) -> k >= {{f:UInt32}}, h))) AS good,
    arraySum(mapValues(h)) AS total
FROM (SELECT sumMap(m) AS h FROM ({_union("tps_hist AS m", sel)}))
"""
    params = _params(sel, since, until) | {"f": int(round(floor_tokens_per_s * 1000))}
    good, total = store.query(sql, params).rows[0]
    return GoodTotal(int(good or 0), int(total or 0))


def availability_good_total(
    store: Store,
    sel: Selector,
    since: datetime,
    until: datetime,
    cache: RollupCache | None = None,
) -> GoodTotal:
    if cache is not None:
        req, err = cache.window(store, sel, ["requests", "errors"], since, until)
        return GoodTotal(int(req[0] - err[0]), int(req[0]))
    inner = _union("requests, errors", sel)
    sql = f"SELECT sum(requests) - sum(errors), sum(requests) FROM ({inner})"
    good, total = store.query(sql, _params(sel, since, until)).rows[0]
    return GoodTotal(int(good or 0), int(total or 0))


@dataclass(frozen=True)
class Totals:
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float


def totals(store: Store, sel: Selector, since: datetime, until: datetime) -> Totals:
    cols = "requests, errors, input_tokens, output_tokens, cached_tokens, cost_usd"
    sql = (
        "SELECT sum(requests), sum(errors), sum(input_tokens), sum(output_tokens), "
        f"sum(cached_tokens), toFloat64(sum(cost_usd)) FROM ({_union(cols, sel)})"
    )
    r = store.query(sql, _params(sel, since, until)).rows[0]
    req, err, inp, out, cached = (int(x or 0) for x in r[:5])
    return Totals(req, err, inp, out, cached, float(r[5] or 0.0))


def latency_quantiles(
    store: Store,
    sel: Selector,
    metric: LatencyMetric,
    quantiles: list[float],
    since: datetime,
    until: datetime,
    cache: RollupCache | None = None,
) -> list[float | None]:
    """Quantiles in seconds: the upper bound of the bucket holding the rank.

    Never below the true value, and above it by less than one bucket width: at most
    10% relative (values just over 10, 100, 1000... us) and 1% near the top of a decade.
    """
    hist = _HIST[metric]
    if cache is not None:
        (vec,) = cache.window(store, sel, [hist], since, until)
        nz = np.flatnonzero(vec)
        return quantiles_from_histogram(
            [int(k) for k in _BOUNDS[nz]], [int(c) for c in vec[nz]], quantiles
        )
    inner = _union(f"{hist} AS m", sel)
    sql = f"SELECT mapKeys(h), mapValues(h) FROM (SELECT sumMap(m) AS h FROM ({inner}))"
    keys, counts = store.query(sql, _params(sel, since, until)).rows[0]
    return quantiles_from_histogram(list(keys or []), list(counts or []), quantiles)


def quantiles_from_histogram(
    keys: list[int], counts: list[int], quantiles: list[float]
) -> list[float | None]:
    total = sum(counts)
    if total == 0:
        return [None for _ in quantiles]
    pairs = sorted(zip(keys, counts, strict=True))
    out: list[float | None] = []
    for q in quantiles:
        rank = max(1, int(-(-q * total // 1)))  # ceil(q * total), at least 1
        seen = 0
        for k, c in pairs:
            seen += c
            if seen >= rank:
                out.append(k / 1e6)
                break
    return out


def round_up_2sig(u: int) -> int:
    """The bucket bound of ``u``: rounded up to two significant digits (as the rollup MV)."""
    p = 1
    while u >= 100 * p:
        p *= 10
    return -(-u // p) * p


# -- dense histograms ---------------------------------------------------------------------
# Every histogram key is a two-significant-digit number below 2**32 (both rounding rules
# produce one), so a histogram fits a fixed vector: slot k for k < 100, then 90 slots per
# decade. Slots are in key order, so thresholds and quantiles work on the vector directly.
_DECADES = 8  # 10**2 .. 10**10 covers UInt32
N_SLOTS = 100 + 90 * _DECADES
_POW = np.array([10**e for e in range(2, 3 + _DECADES)], dtype=np.int64)
Vector = npt.NDArray[np.int64]


def _bounds() -> Vector:
    s = np.arange(N_SLOTS, dtype=np.int64)
    e = np.maximum((s - 100) // 90 + 1, 0)
    return np.where(s < 100, s, ((s - 100) % 90 + 10) * 10**e)


_BOUNDS = _bounds()


def slots(keys: npt.ArrayLike) -> Vector:
    """Slot of each histogram key; ``ValueError`` for a key no rollup writes."""
    k = np.asarray(keys, dtype=np.int64)
    e = np.searchsorted(_POW, k, side="right")  # 0 below 100, 1 for 100..999, ...
    p = 10**e
    out = np.where(e == 0, k, 100 + 90 * (e - 1) + k // p - 10)
    if k.size and (k.min() < 0 or k.max() >= 2**32 or (k % p).any()):
        raise ValueError("histogram keys are not two-significant-digit bounds")
    return out


def to_vector(keys: Sequence[int], values: Sequence[int]) -> Vector:
    vec = np.zeros(N_SLOTS, dtype=np.int64)
    if len(keys):
        np.add.at(vec, slots(keys), np.asarray(values, dtype=np.int64))
    return vec


def latency_from_vector(vec: Vector, threshold_us: int) -> GoodTotal:
    """``latency_good_total``'s rule on a dense histogram."""
    good = int(vec[_BOUNDS <= threshold_us].sum())
    b = round_up_2sig(threshold_us)
    amb = 0 if b == threshold_us or b >= 2**32 else int(vec[slots([b])[0]])
    return GoodTotal(good, int(vec.sum()), amb)


# -- the cache ----------------------------------------------------------------------------
_HOUR = timedelta(hours=1)
_SUM_COLUMNS = {"requests", "errors"}
_HIST_COLUMNS = set(_HIST.values()) | {"tps_hist"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _col_sql(col: str) -> str:
    """A column summed over the rows read, as (keys, values) arrays; sums use key 0."""
    if col in _HIST_COLUMNS:
        return f"mapKeys(sumMap({col})), mapValues(sumMap({col}))"
    if col in _SUM_COLUMNS:
        return f"[toUInt32(0)], [toUInt64(sum({col}))]"
    raise ValueError(f"not a rollup column: {col!r}")


@dataclass
class CacheStats:
    reads: int = 0
    statements: int = 0
    hour_hits: int = 0
    minute_hits: int = 0
    invalidations: int = 0


class RollupCache:
    """Closed buckets of the rollups held in process, so repeated window reads are cheap.

    A window ``[since, until)`` is read as three pieces. With ``H`` = ``until`` floored to
    the hour: the whole hours ``[ceil_hour(since), H)`` (held merged, keyed by table,
    selector, column and hour range), the minutes from ``since`` to its next hour (held
    per minute for that whole hour, so a window sliding through the hour keeps hitting),
    and the minutes ``[H, until)``, which are always read. Misses, the minutes since
    ``H`` and a look at ``system.parts`` go to the store as one statement.

    Late rows: every insert into a rollup makes a new part with a new, higher block
    number. A part numbered above what the check before the last one saw (a part made
    while a read ran is newer than the check of the call before) whose time range
    overlaps held buckets drops them, and they are read again, in a second statement of
    the same call. So buckets are held from the third call on a pair of tables: the
    first reads as an uncached call would (no check: nothing is held), the second learns
    where the blocks are. Merges can drop held buckets needlessly (a
    merged part keeps its sources' oldest time), never keep stale ones. Calls are
    serialized. One cache serves one store (keys include the database); non-replicated
    tables only (replicated tables number blocks per partition).
    """

    def __init__(self, max_hour_entries: int = 4096, max_minute_entries: int = 128) -> None:
        self._lock = threading.Lock()
        self._calls = threading.Lock()
        # An hour entry is one vector per column (6.5 kB); a minute entry 61 (400 kB).
        self._max = {"h": max_hour_entries, "m": max_minute_entries}
        self._hours: OrderedDict[tuple[Any, ...], tuple[datetime, datetime, Vector]] = OrderedDict()
        # minute entries: suffix sums over the hour's minutes: row m = minutes m..59
        self._minutes: OrderedDict[tuple[Any, ...], tuple[datetime, datetime, Vector]] = (
            OrderedDict()
        )
        self._marks: dict[tuple[str, str], tuple[int, int]] = {}  # (previous, last) block
        self._seen: set[tuple[str, str]] = set()  # (database, hourly table) called before
        self.stats = CacheStats()

    def clear(self) -> None:
        with self._lock:
            self._hours.clear()
            self._minutes.clear()
            self._marks.clear()
            self._seen.clear()

    def window(
        self, store: Store, sel: Selector, cols: Sequence[str], since: datetime, until: datetime
    ) -> list[Vector]:
        """Each column's dense vector summed over ``[since, until)`` (minute-aligned)."""
        since, until = (floor_minute(_utc(t)) for t in (since, until))
        # One call at a time: the late-row marks assume calls do not overlap (the embedded
        # driver serializes queries anyway).
        with self._calls:
            self.stats.reads += 1
            for attempt in range(2):
                got = self._try(store, sel, cols, since, until, use_held=attempt == 0)
                if got is not None:
                    return got
        raise AssertionError("unreachable: the second attempt reads everything")

    # -- internals ---------------------------------------------------------------------------
    def _try(
        self,
        store: Store,
        sel: Selector,
        cols: Sequence[str],
        since: datetime,
        until: datetime,
        *,
        use_held: bool,
    ) -> list[Vector] | None:
        suffix = "_pool" if not sel.tenant else ""
        t_h, t_m = f"requests_1h{suffix}", f"requests_1m{suffix}"
        db, skey = store.database, (sel.pool, sel.model, sel.tenant)
        ck = tuple(cols)
        h_end = until.replace(minute=0)
        params: dict[str, Any] = {
            "pool": sel.pool, "model": sel.model, "tenant": sel.tenant,
            "h_end": h_end, "until": until,
        }  # fmt: skip
        where = (
            "({pool:String} = '' OR pool = {pool:String}) "
            "AND ({model:String} = '' OR model = {model:String}) "
            "AND ({tenant:String} = '' OR tenant = {tenant:String})"
        )
        branches: list[str] = []
        agg = ", ".join(_col_sql(c) for c in cols)

        # whole hours
        h0 = _ceil_hour(since)
        hours_key = (db, t_h, skey, ck, h0, h_end)
        hours_vec: list[Vector] | None = None
        if since < h_end and h0 < h_end:
            with self._lock:
                held = self._hours.get(hours_key) if use_held else None
                if held is not None:
                    self._hours.move_to_end(hours_key)
                    self.stats.hour_hits += 1
                    hours_vec = list(held[2])
            if hours_vec is None:
                params |= {"h0": h0}
                branches.append(
                    f"SELECT 1 AS kind, toUInt32(0) AS b, {agg} FROM {t_h} WHERE {where} "
                    "AND hour >= {h0:DateTime('UTC')} AND hour < {h_end:DateTime('UTC')}"
                )
        # the minutes from `since` to its next hour, when that hour is closed
        m_hour = since.replace(minute=0)
        minute_key = (db, t_m, skey, ck, m_hour)
        minute_vec: list[Vector] | None = None
        edge = since != m_hour and m_hour < h_end
        if edge:
            with self._lock:
                mheld = self._minutes.get(minute_key) if use_held else None
                if mheld is not None:
                    self._minutes.move_to_end(minute_key)
                    self.stats.minute_hits += 1
                    minute_vec = [m[since.minute] for m in mheld[2]]
        # the minutes since the last whole hour (or the whole window inside one hour), and
        # the start hour's minutes when not held: one read of the minute table for both
        params["t0"] = max(since, h_end)
        open_ = "minute >= {t0:DateTime('UTC')} AND minute < {until:DateTime('UTC')}"
        with self._lock:
            marks = {t: self._marks.get((db, t), (-1, -1)) for t in (t_h, t_m)}
        # per minute only when they will be held (see the class: from the second call on)
        per_minute = marks[t_m][1] >= 0
        if edge and minute_vec is None:
            params |= {"m0": m_hour if per_minute else since, "m1": m_hour + _HOUR}
            b_sql = "if(kind = 3, 0, toUInt32(minute))" if per_minute else "toUInt32(0)"
            branches.append(
                f"SELECT if({open_}, 3, 2) AS kind, {b_sql} AS b, {agg} FROM {t_m} WHERE {where} "
                f"AND (({open_}) OR (minute >= {{m0:DateTime('UTC')}} "
                "AND minute < {m1:DateTime('UTC')})) GROUP BY kind, b"
            )
        else:
            branches.append(
                f"SELECT 3 AS kind, toUInt32(0) AS b, {agg} FROM {t_m} WHERE {where} AND {open_}"
            )
        # late rows into held buckets: parts newer than the check before the last one; a
        # first call skips the check (nothing can be held yet), so one-off reads cost no more
        with self._lock:
            first_call = (db, t_h) not in self._seen
            self._seen.add((db, t_h))
        if not first_call:
            branches.append(self._parts_branch(params, t_h, t_m, marks, len(cols)))
        rows = store.query(" UNION ALL ".join(branches), params).rows
        self.stats.statements += 1

        n = len(cols)
        tail = [np.zeros(N_SLOTS, dtype=np.int64) for _ in cols]
        fresh_hours: list[Vector] | None = None
        minute_rows: dict[int, list[Vector]] = {}
        late: dict[str, tuple[int, int, int]] = {}
        for r in rows:
            kind, b = int(r[0]), int(r[1])
            if kind >= 4:
                new_max, late_max = (int(x) for x in r[3])
                late[t_m if kind == 5 else t_h] = (new_max, b, late_max)
                continue
            vecs = [to_vector(r[2 + 2 * i], r[3 + 2 * i]) for i in range(n)]
            if kind == 1:
                fresh_hours = vecs
            elif kind == 2:
                minute_rows[b] = vecs
            else:
                tail = vecs

        stale = self._apply_late(db, late, marks)
        used_stale = (hours_vec is not None and (db, t_h) in stale and _overlaps(
            stale[(db, t_h)], h0, h_end)) or (minute_vec is not None and (db, t_m) in stale
            and _overlaps(stale[(db, t_m)], m_hour, m_hour + _HOUR))  # fmt: skip
        if used_stale:
            return None  # a held piece this read used has changed: read everything again

        # Hold what was read only if a watermark from an earlier call exists: the next
        # check then looks at every part made since before this read's snapshot.
        with self._lock:
            if fresh_hours is not None:
                hours_vec = fresh_hours
                if marks[t_h][1] >= 0:
                    self._put(self._hours, "h", hours_key, (h0, h_end, np.stack(fresh_hours)))
            if edge and minute_vec is None and not per_minute:
                zero = np.zeros(N_SLOTS, dtype=np.int64)
                minute_vec = [sum((v[i] for v in minute_rows.values()), zero) for i in range(n)]
            elif edge and minute_vec is None:
                per_min = np.zeros((n, 61, N_SLOTS), dtype=np.int64)
                base = int((m_hour - _EPOCH).total_seconds())
                for b, vecs in minute_rows.items():
                    for i in range(n):
                        per_min[i, (b - base) // 60] += vecs[i]
                suffix_sums = np.flip(np.cumsum(np.flip(per_min, axis=1), axis=1), axis=1)
                if per_minute:
                    self._put(self._minutes, "m", minute_key, (m_hour, m_hour + _HOUR, suffix_sums))
                minute_vec = [suffix_sums[i, since.minute] for i in range(n)]
        out = []
        for i in range(n):
            v = tail[i].copy()
            if hours_vec is not None:
                v += hours_vec[i]
            if minute_vec is not None:
                v += minute_vec[i]
            out.append(v)
        return out

    @staticmethod
    def _parts_branch(
        params: dict[str, Any], t_h: str, t_m: str, marks: dict[str, tuple[int, int]], n: int
    ) -> str:
        """Per table: the newest block, and the time span of parts newer than the mark."""
        params |= {"th": t_h, "tm": t_m, "wh": marks[t_h][0], "wm": marks[t_m][0]}
        newer = "max_block_number > if(table = {tm:String}, {wm:Int64}, {wh:Int64})"
        cols = [
            "CAST([], 'Array(UInt32)')",
            f"[toUInt64(max(max_block_number)), toUInt64(maxIf(max_time, {newer}))]",
        ] + ["CAST([], 'Array(UInt32)'), CAST([], 'Array(UInt64)')"] * (n - 1)
        return (
            f"SELECT 4 + (table = {{tm:String}}) AS kind, toUInt32(minIf(min_time, {newer})) "
            f"AS b, {', '.join(cols)} FROM system.parts "
            "WHERE database = currentDatabase() AND active "
            "AND table IN ({th:String}, {tm:String}) GROUP BY table"
        )

    def _put(
        self,
        od: OrderedDict[tuple[Any, ...], tuple[datetime, datetime, Vector]],
        which: str,
        key: tuple[Any, ...],
        val: tuple[datetime, datetime, Vector],
    ) -> None:
        od[key] = val
        od.move_to_end(key)
        while len(od) > self._max[which]:
            od.popitem(last=False)

    def _apply_late(
        self,
        db: str,
        late: dict[str, tuple[int, int, int]],
        marks: dict[str, tuple[int, int]],
    ) -> dict[tuple[str, str], tuple[datetime, datetime]]:
        """Drop held buckets that parts newer than the last-but-one check overlap."""
        stale: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        with self._lock:
            for table, (new_max, lo, hi) in late.items():
                prev, last = marks[table]
                # Next time, look at parts newer than this check's predecessor.
                self._marks[(db, table)] = (last if last >= 0 else new_max, new_max)
                if prev < 0 or hi == 0:
                    continue  # first look at this table (nothing held), or no new parts
                span = (_from_ts(lo), _from_ts(hi) + timedelta(seconds=1))
                held = self._hours if table.startswith("requests_1h") else self._minutes
                drop = [k for k, (a, b, _) in held.items()
                        if k[0] == db and k[1] == table and _overlaps(span, a, b)]  # fmt: skip
                for k in drop:
                    del held[k]
                if drop:
                    self.stats.invalidations += len(drop)
                stale[(db, table)] = span
        return stale


def _utc(t: datetime) -> datetime:
    """Naive datetimes are UTC, as the drivers bind them."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _from_ts(ts: int) -> datetime:
    return _EPOCH + timedelta(seconds=ts)


def _overlaps(span: tuple[datetime, datetime], a: datetime, b: datetime) -> bool:
    return span[0] < b and a < span[1]
