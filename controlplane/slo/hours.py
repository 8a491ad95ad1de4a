"""Whole-hour sums per series and hour, held between evaluation cycles.

An SLO window ``[s, until)`` is whole hours ``[ceil_hour(s), floor_hour(until))`` plus
the minutes at both edges. The hours are the expensive part (30 days of histograms) and
hardly change, so ``HourCache`` holds, per hourly rollup table, the sum of every SLO
column (good/total expression) per series (pool, model, tenant) and hour, as prefix
sums per selector: any window's hours are then two array lookups, whatever minute the
window starts at.

Each cycle brings the held hours up to date:

1. One check query for all tables: ``sum(requests)`` per hour over the hours asked for
   (whole tables: the ``requests`` and ``hour`` columns only, ~10-20 ms). Every request
   row adds 1 to its hour's ``requests``, so a held hour whose count differs from the
   count taken when it was read has received rows since (ingest lag longer than the
   evaluation offset, a backfill, any series): it is read again.
2. A read of the hours not held yet (all of them on the first cycle, the newly closed
   hour after the hour turns) and of the changed ones. A long read (the first cycle)
   runs one query per histogram, each for only the series whose SLOs use it.

So a cycle's answer is what an uncached read at the same moment would give. Hours older
than the oldest window start asked for (less a day of slack) are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from controlplane.slo.burn import Counts
from controlplane.store.base import Store

ColKey = tuple[str, str, int]  # (per-row SQL expression, its parameter's name, value)
Series = tuple[str, str, str]  # (pool, model, tenant); '' in a selector means any
Ints = npt.NDArray[np.int64]

_HOUR = timedelta(hours=1)
_KEEP = timedelta(days=1)  # hours held before the oldest window start asked for
_MAX_RUNS = 4  # more separate runs of hours to read: read their span, filtered by a set
_SPLIT_HOURS = 24  # reads of more hours run one query per histogram column
_HIST = re.compile(r"\b\w+_hist\b")


def bind_cols(
    cols: Sequence[ColKey], params: dict[str, Any], ids: Sequence[int] | None = None
) -> list[str]:
    """SQL of each column, binding its parameter under a name of its own (``thr3``: the
    column's position, or its number in ``ids``)."""
    out = []
    for n, (expr, pname, value) in zip(ids or range(len(cols)), cols, strict=True):
        if pname:
            params[f"{pname}{n}"] = value
            expr = expr.replace("{" + pname + ":", "{" + f"{pname}{n}" + ":")
        out.append(expr)
    return out


def selectors_sql(sels: Iterable[Series], params: dict[str, Any], name: str = "sel") -> str:
    """SQL matching the rows of any of the selectors, bound as ``{name}_p0``... parameters."""
    terms = []
    for k, sel in enumerate(sorted(set(sels))):
        conds = []
        for dim, v in zip(("pool", "model", "tenant"), sel, strict=True):
            if v:
                params[f"{name}_{dim[0]}{k}"] = v
                conds.append(f"{dim} = {{{name}_{dim[0]}{k}:String}}")
        if not conds:
            return "1"
        terms.append("(" + " AND ".join(conds) + ")")
    return "(" + " OR ".join(terms) + ")" if terms else "0"


def matches(sel: Series, series: Series) -> bool:
    return all(not s or s == v for s, v in zip(sel, series, strict=True))


def _hist(col: ColKey) -> str:
    m = _HIST.search(col[0])
    return m.group(0) if m else ""


class HourTable:
    """One hourly rollup table's held hours: ``vals[series, hour, column]``.

    ``uses`` maps each column to the selectors that read it: a long read (the first
    cycle, a gap) runs one query per histogram column with only the series whose SLOs
    use it, since decoding the histograms of the granules read is most of the cost.
    """

    def __init__(self, table: str, uses: Mapping[ColKey, frozenset[Series]]) -> None:
        self.table = table
        self.uses = dict(uses)
        self.cols = list(self.uses)
        self.col_index = {c: i for i, c in enumerate(self.cols)}
        self.lo: datetime | None = None  # first hour held
        self.series: dict[Series, int] = {}
        self.vals: Ints = np.zeros((0, 0, len(self.cols)), dtype=np.int64)
        self.fp: Ints = np.zeros(0, dtype=np.int64)  # sum(requests) per hour when read
        self.read: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._prefix: dict[Series, Ints] = {}

    def holds(self, uses: Mapping[ColKey, frozenset[Series]]) -> bool:
        return all(c in self.uses and s <= self.uses[c] for c, s in uses.items())

    def _idx(self, h: datetime) -> int:
        assert self.lo is not None
        return int((h - self.lo) / _HOUR)

    def cover(self, lo: datetime, tm: datetime) -> None:
        """Lay the arrays over the held hours and [lo, tm), dropping hours long before lo."""
        if self.lo is None:
            new_lo, new_hi = lo, tm
        else:
            hi = self.lo + _HOUR * len(self.fp)
            new_lo, new_hi = min(lo, max(self.lo, lo - _KEEP)), max(hi, tm)
            if (new_lo, new_hi) == (self.lo, hi):
                return
        n = int((new_hi - new_lo) / _HOUR)
        vals = np.zeros((len(self.series), n, len(self.cols)), dtype=np.int64)
        fp, read = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        if self.lo is not None:  # copy the overlap of the old and new ranges
            shift = int((self.lo - new_lo) / _HOUR)
            a, b = max(0, shift), min(n, shift + len(self.fp))
            if a < b:
                old = slice(a - shift, b - shift)
                vals[:, a:b], fp[a:b], read[a:b] = self.vals[:, old], self.fp[old], self.read[old]
        self.lo, self.vals, self.fp, self.read = new_lo, vals, fp, read
        self._prefix.clear()

    def update(self, store: Store, lo: datetime, counts: Ints, cache: HourCache) -> None:
        """Hold every hour from ``lo`` on as the store has it now, given the table's
        request count per hour (``counts``, from the check)."""
        i0 = self._idx(lo)
        i1 = i0 + len(counts)
        need = ~self.read[i0:i1] | (counts != self.fp[i0:i1])
        if not need.any():
            return
        idxs = [i0 + int(k) for k in np.flatnonzero(need)]
        if len(idxs) > _SPLIT_HOURS:
            groups: dict[str, list[int]] = {}
            for i, c in enumerate(self.cols):
                groups.setdefault(_hist(c), []).append(i)
            parts = list(groups.values())
        else:
            parts = [list(range(len(self.cols)))]
        self.vals[:, idxs] = 0
        self._read(store, idxs, parts)
        cache.queries += 1
        cache.hours_read += len(idxs)
        # The counts were taken before the read: rows landing in between are in the
        # values, not in the count, so the next check reads that hour again.
        self.fp[idxs] = counts[need]
        self.read[idxs] = True
        self._prefix.clear()

    def _hours_sql(self, idxs: list[int], params: dict[str, Any]) -> str:
        assert self.lo is not None
        runs: list[list[int]] = []
        for i in idxs:
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        extra = ""
        if len(runs) > _MAX_RUNS:  # scattered hours: their span, then the exact set
            runs = [[runs[0][0], runs[-1][1]]]
            params["hs"] = [int((self.lo + i * _HOUR).timestamp()) for i in idxs]
            extra = " AND toUnixTimestamp(hour) IN {hs:Array(UInt32)}"
        conds = []
        for k, (a, b) in enumerate(runs):
            params[f"a{k}"], params[f"b{k}"] = self.lo + a * _HOUR, self.lo + b * _HOUR
            conds.append(f"(hour >= {{a{k}:DateTime('UTC')}} AND hour < {{b{k}:DateTime('UTC')}})")
        return f"({' OR '.join(conds)}){extra}"

    def _read(self, store: Store, idxs: list[int], parts: list[list[int]]) -> None:
        """Read the hours ``idxs``: one SELECT per part (a list of columns), each for the
        series whose SLOs use those columns, in one UNION ALL statement (the engine runs
        the parts side by side)."""
        assert self.lo is not None
        params: dict[str, Any] = {}
        hours = self._hours_sql(idxs, params)
        width = max(len(cols) for cols in parts)
        selects = []
        for g, cols in enumerate(parts):
            exprs = bind_cols([self.cols[i] for i in cols], params, cols)
            sums = [f"toUInt64(sum({e}))" for e in exprs] + ["toUInt64(0)"] * (width - len(cols))
            sels = frozenset().union(*(self.uses[self.cols[i]] for i in cols))
            selects.append(
                f"SELECT {g} AS g, pool, model, tenant, toUnixTimestamp(hour) AS h, "
                f"{', '.join(sums)} FROM {self.table}"
                f" WHERE {selectors_sql(sels, params, f's{g}')} AND {hours}"
                " GROUP BY pool, model, tenant, h"
            )
        # A DataFrame: its columns convert to arrays without a Python object per value.
        df = store.query_df(" UNION ALL ".join(selects), params)
        if df.empty:
            return
        keys = list(zip(*(df[c].tolist() for c in ("pool", "model", "tenant")), strict=True))
        for key in keys:  # series seen for the first time get a row of zeros
            if key not in self.series:
                self.series[key] = len(self.series)
        if len(self.series) > self.vals.shape[0]:
            grow = np.zeros((len(self.series) - self.vals.shape[0], *self.vals.shape[1:]))
            self.vals = np.concatenate([self.vals, grow.astype(np.int64)])
        s = np.array([self.series[k] for k in keys])
        h = (df["h"].to_numpy(dtype=np.int64) - int(self.lo.timestamp())) // 3600
        v = df.iloc[:, 5:].fillna(0).to_numpy(dtype=np.int64)
        part = df["g"].to_numpy()
        for k, cols in enumerate(parts):
            r = part == k
            self.vals[s[r, None], h[r, None], np.array(cols)[None, :]] = v[r, : len(cols)]

    def window(self, sel: Series, good: ColKey, total: ColKey, h: datetime, tm: datetime) -> Counts:
        """Sums of one selector's good and total columns over the held hours [h, tm)."""
        p = self._prefix.get(sel)
        if p is None:
            rows = [i for key, i in self.series.items() if matches(sel, key)]
            p = np.zeros((self.vals.shape[1] + 1, len(self.cols)), dtype=np.int64)
            np.cumsum(self.vals[rows].sum(axis=0), axis=0, out=p[1:])
            self._prefix[sel] = p
        a, b = self._idx(h), self._idx(tm)
        g, n = self.col_index[good], self.col_index[total]
        return Counts(int(p[b, g] - p[a, g]), int(p[b, n] - p[a, n]))


class HourCache:
    """Held hours of every hourly rollup table the SLOs read (see the module doc)."""

    def __init__(self) -> None:
        self._tables: dict[str, HourTable] = {}
        self.hours_read = 0  # hours read from the store, per table (a 30-day read: 720)
        self.queries = 0  # store queries made (checks and reads)

    def table(self, name: str, uses: Mapping[ColKey, frozenset[Series]]) -> HourTable:
        """The table's cache, started over (once) when asked for series or columns it lacks."""
        t = self._tables.get(name)
        if t is None or not t.holds(uses):
            if t is not None:
                keys = set(uses) | set(t.uses)
                uses = {c: uses.get(c, frozenset()) | t.uses.get(c, frozenset()) for c in keys}
            t = self._tables[name] = HourTable(name, uses)
        return t

    def refresh(
        self,
        store: Store,
        tm: datetime,
        wanted: Mapping[str, tuple[Mapping[ColKey, frozenset[Series]], datetime]],
    ) -> dict[str, HourTable]:
        """Each table ``name`` holding hours ``[lo, tm)`` of ``wanted[name] = (uses, lo)``
        as the store has them now: one check query for all tables, then the reads."""
        tables = {name: self.table(name, uses) for name, (uses, _) in wanted.items()}
        active = [(name, lo) for name, (_, lo) in wanted.items() if lo < tm]
        if not active:
            return tables
        params: dict[str, Any] = {"tm": tm}
        parts = []
        for k, (name, lo) in enumerate(active):
            tables[name].cover(lo, tm)
            params[f"lo{k}"] = lo
            parts.append(
                f"SELECT {k} AS t, toUnixTimestamp(hour) AS h, sum(requests) FROM {name}"
                f" WHERE hour >= {{lo{k}:DateTime('UTC')}} AND hour < {{tm:DateTime('UTC')}}"
                " GROUP BY h"
            )
        rows = store.query(" UNION ALL ".join(parts), params).rows
        self.queries += 1
        counts = [np.zeros(int((tm - lo) / _HOUR), dtype=np.int64) for _, lo in active]
        for k, h, n in rows:
            lo = active[k][1]
            counts[k][(int(h) - int(lo.timestamp())) // 3600] = int(n)
        for (name, lo), c in zip(active, counts, strict=True):
            tables[name].update(store, lo, c, self)
        return tables
