"""Whole-hour sums per series and hour, held between evaluation cycles.

An SLO window ``[s, until)`` is whole hours ``[ceil_hour(s), floor_hour(until))`` plus
the minutes at both edges. The hours are the expensive part (30 days of histograms) and
hardly change, so ``HourCache`` holds, per hourly rollup table, the sum of every SLO
column (good/total expression) per series (pool, model, tenant) and hour, as prefix
sums per selector: any window's hours are then two array lookups, whatever minute the
window starts at.

Each cycle brings the held hours up to date:

1. One check query for all tables: ``sum(requests)`` and the row count per hour over the
   hours asked for (whole tables: the ``requests`` and ``hour`` columns only, ~10-20 ms).
   Every request row adds 1 to its hour's ``requests``, so a held hour whose count
   differs from the count taken when it was read has received rows since (ingest lag
   longer than the evaluation offset, a backfill, any series): it is read again.
2. A read of the hours not held yet (all of them on the first cycle, the newly closed
   hour after the hour turns) and of the changed ones, per column: after a restart with
   one SLO changed, only its columns are read for every hour. A long read of many rows
   (the first cycle on a tenant-level table) runs one SELECT per histogram, each for
   only the series whose SLOs use it; a read of few rows (a pool-level table: ~200 rows
   a day) is one SELECT, since every SELECT costs 10-15 ms of analysis however little
   it reads.

So a cycle's answer is what an uncached read at the same moment would give. Hours older
than the oldest window start asked for (less a day of slack) are dropped. With ``saved``
(``hour_state.HourState``), a table new to the process first takes the hours an earlier
process saved (the columns it still reads), before the check, which vets them like any
held hour; hours read are saved in turn, with every column (written by ``flush``: the
evaluator's at the end of each cycle, from a thread, and the next cycle's at its start).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from controlplane.slo.burn import Counts
from controlplane.slo.statement import Rows
from controlplane.store.base import Store

ColKey = tuple[str, str, int]  # (per-row SQL expression, its parameter's name, value)
Series = tuple[str, str, str]  # (pool, model, tenant); '' in a selector means any
Ints = npt.NDArray[np.int64]

_HOUR = timedelta(hours=1)
_KEEP = timedelta(days=1)  # hours held before the oldest window start asked for
_MAX_RUNS = 4  # more separate runs of hours to read: read their span, filtered by a set
_SPLIT_HOURS = 24  # reads of more hours ...
_SPLIT_ROWS = 65_536  # ... and more rows than this run one SELECT per histogram column
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
    """SQL matching the rows of any of the selectors, bound as ``{name}_p0``... parameters.

    Selectors that another one covers add nothing and are dropped; those naming only a
    pool become one ``pool IN``: each term costs the engine's analysis of every SELECT
    in a cycle (16 terms for 8 pools, with and without a model: ~5 ms a SELECT)."""
    uniq = set(sels)
    if ("", "", "") in uniq:
        return "1"
    kept = sorted(s for s in uniq if not _covered(s, uniq))
    terms = []
    pools = [sel[0] for sel in kept if not sel[1] and not sel[2]]
    if pools:
        params[f"{name}_pools"] = pools
        terms.append(f"pool IN {{{name}_pools:Array(String)}}")
    for k, sel in enumerate(sel for sel in kept if sel[1] or sel[2]):
        conds = []
        for dim, v in zip(("pool", "model", "tenant"), sel, strict=True):
            if v:
                params[f"{name}_{dim[0]}{k}"] = v
                conds.append(f"{dim} = {{{name}_{dim[0]}{k}:String}}")
        terms.append("(" + " AND ".join(conds) + ")")
    return "(" + " OR ".join(terms) + ")" if terms else "0"


def _covered(sel: Series, sels: set[Series]) -> bool:
    """Another of ``sels`` matches every series ``sel`` matches."""
    return any(other != sel and matches(other, sel) for other in sels)


def matches(sel: Series, series: Series) -> bool:
    return all(not s or s == v for s, v in zip(sel, series, strict=True))


def _ints(xs: Sequence[int]) -> Ints:
    return np.asarray(xs, dtype=np.int64)


def _hist(col: ColKey) -> str:
    m = _HIST.search(col[0])
    return m.group(0) if m else ""


class HourTable:
    """One hourly rollup table's held hours: ``vals[series, hour, column]``.

    ``uses`` maps each column to the selectors that read it: a long read (the first
    cycle, a gap) is one SELECT per histogram with only the series whose SLOs use it,
    since decoding the histograms of the granules read is most of the cost.
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
        # read[hour, column]: the column's sums of that hour are held (after a restart,
        # a column new to the SLO set is read while the others come from saved rows)
        self.read: npt.NDArray[np.bool_] = np.zeros((0, len(self.cols)), dtype=bool)
        self._prefix: dict[Series, Ints] = {}
        self.restored = False  # saved hours looked up (HourCache.saved)

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
        fp, read = np.zeros(n, dtype=np.int64), np.zeros((n, len(self.cols)), dtype=bool)
        if self.lo is not None:  # copy the overlap of the old and new ranges
            shift = int((self.lo - new_lo) / _HOUR)
            a, b = max(0, shift), min(n, shift + len(self.fp))
            if a < b:
                old = slice(a - shift, b - shift)
                vals[:, a:b], fp[a:b], read[a:b] = self.vals[:, old], self.fp[old], self.read[old]
        self.lo, self.vals, self.fp, self.read = new_lo, vals, fp, read
        self._prefix.clear()

    def reads(self, lo: datetime, counts: Ints, rows: Ints) -> list[HourRead]:
        """What to read so that every hour from ``lo`` on is held as the store has it,
        given the table's request count per hour (``counts``, from the check): the hours
        not held and those whose count changed, per column (columns needing the same
        hours share a read). A long read of many rows (``rows``: the table's rows per
        hour) is one part per histogram, each for only the series whose SLOs use it."""
        i0, n = self._idx(lo), len(counts)
        need = ~self.read[i0 : i0 + n] | (counts != self.fp[i0 : i0 + n])[:, None]
        groups: dict[bytes, list[int]] = {}
        for c in np.flatnonzero(need.any(axis=0)).tolist():
            groups.setdefault(need[:, c].tobytes(), []).append(c)
        out = []
        for cols in groups.values():
            hours = need[:, cols[0]]
            idxs = [i0 + int(k) for k in np.flatnonzero(hours)]
            if len(idxs) > _SPLIT_HOURS and int(rows[hours].sum()) > _SPLIT_ROWS:
                by_hist: dict[str, list[int]] = {}
                for c in cols:
                    by_hist.setdefault(_hist(self.cols[c]), []).append(c)
                parts = list(by_hist.values())
            else:
                parts = [cols]
            out += [HourRead(self, idxs, part, counts[hours]) for part in parts]
        return out

    def hours_sql(self, idxs: list[int], params: dict[str, Any]) -> str:
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

    def store_reads(self, reads: list[HourRead]) -> None:
        """Take the rows of this table's reads (all parts of one statement)."""
        assert self.lo is not None
        parts = [(r, r.rows) for r in reads if r.rows is not None and len(r.rows)]
        rows_of = [self._series_of(f) for _, f in parts]  # new series get an index here
        self._grow()  # ... and a row of zeros here
        every = np.arange(len(self.series))
        for r in reads:
            self.vals[np.ix_(every, _ints(r.idxs), _ints(r.cols))] = 0
        base = int(self.lo.timestamp())
        for (read, f), s in zip(parts, rows_of, strict=True):
            h = (f.key - base) // 3600
            self.vals[s[:, None], h[:, None], np.array(read.cols)[None, :]] = f.vals
        # The counts were taken before the read: rows landing in between are in the
        # values, not in the count, so the next check reads that hour again.
        for r in reads:
            self.fp[r.idxs] = r.counts
            self.read[np.ix_(_ints(r.idxs), _ints(r.cols))] = True
        self._prefix.clear()

    def restore(self, rows: HourRows, cols: Sequence[int]) -> list[int]:
        """Take saved hours that fall in the held range and are not held yet; returns
        their indexes. ``cols``: the table's column for each saved column (-1: one the
        SLOs no longer read). The next check re-reads any hour whose count has changed
        since, and the next read fills the columns the saved rows lack."""
        assert self.lo is not None
        if rows.vals.shape != (len(rows.names), len(cols)):
            raise ValueError(f"{rows.vals.shape} saved values for {len(rows.names)} series "
                             f"x {len(cols)} columns")  # fmt: skip
        src = [j for j, c in enumerate(cols) if c >= 0]
        dst = np.array([cols[j] for j in src], dtype=np.int64)
        if not src:
            return []
        if len(set(dst.tolist())) != len(dst):
            raise ValueError("saved columns repeat")
        i = (rows.hours - int(self.lo.timestamp())) // 3600
        take = (i >= 0) & (i < len(self.fp))
        take[take] = ~self.read[i[take]].any(axis=1)
        per_hour = np.diff(rows.offsets)
        entries = np.repeat(take, per_hour)
        names = [key for key, e in zip(rows.names, entries.tolist(), strict=True) if e]
        ids = np.array([self.series.setdefault(key, len(self.series)) for key in names],
                       dtype=np.int64)  # fmt: skip
        self._grow()
        hrs = np.repeat(i, per_hour)[entries]
        self.vals[ids[:, None], hrs[:, None], dst[None, :]] = rows.vals[entries][:, src]
        self.fp[i[take]] = rows.counts[take]
        self.read[np.ix_(i[take], dst)] = True
        self._prefix.clear()
        return [int(k) for k in i[take]]

    def saved(self, idxs: Sequence[int]) -> HourRows:
        """Held hours ``idxs`` as ``restore`` takes them back (the series with any value)."""
        assert self.lo is not None
        names: list[Series] = [("", "", "")] * len(self.series)
        for key, k in self.series.items():
            names[k] = key
        idx = np.asarray(idxs, dtype=np.int64)
        v = self.vals[:, idx, :].transpose(1, 0, 2)  # [hour, series, column]
        keep = v.any(axis=2)
        hi, si = np.nonzero(keep)
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
        return HourRows(int(self.lo.timestamp()) + 3600 * idx, self.fp[idx].copy(), offsets,
                        [names[k] for k in si.tolist()], v[hi, si])  # fmt: skip

    def _grow(self) -> None:
        """A row of zeros for each series added since the arrays were laid out."""
        if len(self.series) > self.vals.shape[0]:
            grow = np.zeros((len(self.series) - self.vals.shape[0], *self.vals.shape[1:]))
            self.vals = np.concatenate([self.vals, grow.astype(np.int64)])

    def _series_of(self, f: Rows) -> Ints:
        """Each row's series index, from its (pool, model, tenant) columns ``a, b, c``.

        Rows are coded as one integer per distinct triple (a Python key per distinct
        series, not per row: ~36k rows per 30-day read)."""
        codes, names = zip(*(pd.factorize(x) for x in (f.a, f.b, f.c)), strict=True)
        combined = (codes[0] * len(names[1]) + codes[1]) * len(names[2]) + codes[2]
        keys, inverse = np.unique(combined, return_inverse=True)
        ab, c = np.divmod(keys, len(names[2]))
        a, b = np.divmod(ab, len(names[1]))
        ids = [self.series.setdefault((names[0][i], names[1][j], names[2][k]), len(self.series))
               for i, j, k in zip(a.tolist(), b.tolist(), c.tolist(), strict=True)]  # fmt: skip
        return np.asarray(ids, dtype=np.int64)[inverse]

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


@dataclass(frozen=True)
class HourRows:
    """Held hours as saved: hour ``hours[k]`` (unix seconds) had ``counts[k]`` requests
    when read; its series are ``names[offsets[k]:offsets[k + 1]]`` (those with any
    value) and ``vals`` has their values, a row per series and a column per column."""

    hours: Ints
    counts: Ints
    offsets: Ints
    names: list[Series]
    vals: Ints


class HourRead:
    """One part of a read: columns ``cols`` of hours ``idxs`` for the series that use them."""

    def __init__(self, table: HourTable, idxs: list[int], cols: list[int], counts: Ints) -> None:
        self.table, self.idxs, self.cols, self.counts = table, idxs, cols, counts
        self.rows: Rows | None = None

    @property
    def width(self) -> int:
        return len(self.cols)

    def select(self, params: dict[str, Any]) -> tuple[str, str]:
        t = self.table
        exprs = bind_cols([t.cols[i] for i in self.cols], params, self.cols)
        sels = frozenset().union(*(t.uses[t.cols[i]] for i in self.cols))
        sums = ", ".join(f"toUInt64(sum({e}))" for e in exprs)
        return (
            "toString(pool), toString(model), toString(tenant),"
            f" toUInt64(toUnixTimestamp(hour)) AS h, {sums}",
            f"FROM {t.table} WHERE {selectors_sql(sels, params)}"
            f" AND {t.hours_sql(self.idxs, params)} GROUP BY pool, model, tenant, h",
        )

    def take(self, rows: Rows) -> None:
        self.rows = rows


class SavedHours(Protocol):
    """Held hours kept outside the process (``hour_state.HourState``)."""

    hours_loaded: int  # hours restored from saved rows
    hours_saved: int  # hours written

    def load(self, store: Store, tables: Sequence[tuple[HourTable, datetime, datetime]]) -> None:
        """Restore saved hours of ``[lo, tm)`` into each table; never raises."""
        ...

    def save(self, store: Store, reads: Sequence[tuple[HourTable, list[int]]]) -> None:
        """Keep hours ``idxs`` of each table as just read, for ``flush``; never raises."""
        ...

    def flush(self, store: Store, *, background: bool = False) -> None:
        """Write what ``save`` kept: now, or from a thread of its own that the next
        ``flush`` waits for; never raises."""
        ...


class Reads:
    """The reads a cycle needs; ``finish`` stores their rows once the statement ran."""

    def __init__(
        self, tables: dict[str, HourTable], parts: list[HourRead], cache: HourCache, store: Store
    ) -> None:
        self.tables, self.parts, self.cache, self.store = tables, parts, cache, store

    def finish(self) -> dict[str, HourTable]:
        by_table: dict[str, list[HourRead]] = {}
        for r in self.parts:
            by_table.setdefault(r.table.table, []).append(r)
        done = []
        for name, reads in by_table.items():
            self.tables[name].store_reads(reads)
            hours = sorted(set().union(*(r.idxs for r in reads)))
            self.cache.hours_read += len(hours)
            done.append((self.tables[name], hours))
        if self.cache.saved is not None and done:
            self.cache.saved.save(self.store, done)
        if self.parts:
            self.cache.queries += 1
        return self.tables


class HourCache:
    """Held hours of every hourly rollup table the SLOs read (see the module doc);
    with ``saved``, a new table starts from the hours saved by earlier processes."""

    def __init__(self, saved: SavedHours | None = None) -> None:
        self._tables: dict[str, HourTable] = {}
        self.saved = saved
        self.hours_read = 0  # hours read from the store, per table (a 30-day read: 720)
        self.queries = 0  # store queries made (checks and reads)

    def flush(self, store: Store, *, background: bool = False) -> None:
        """Write the hours read since the last flush (``SavedHours.flush``)."""
        if self.saved is not None:
            self.saved.flush(store, background=background)

    def table(self, name: str, uses: Mapping[ColKey, frozenset[Series]]) -> HourTable:
        """The table's cache, started over (once) when asked for series or columns it lacks."""
        t = self._tables.get(name)
        if t is None or not t.holds(uses):
            if t is not None:
                keys = set(uses) | set(t.uses)
                uses = {c: uses.get(c, frozenset()) | t.uses.get(c, frozenset()) for c in keys}
            t = self._tables[name] = HourTable(name, uses)
        return t

    def prepare(
        self,
        store: Store,
        tm: datetime,
        wanted: Mapping[str, tuple[Mapping[ColKey, frozenset[Series]], datetime]],
    ) -> Reads:
        """Each table ``name`` to hold hours ``[lo, tm)`` of ``wanted[name] = (uses, lo)``:
        runs the check (one query for all tables) and returns the reads still needed,
        to run (``statement.run_parts``) and then ``finish``."""
        self.flush(store)  # a write-behind save of the last cycle first (and before load)
        tables = {name: self.table(name, uses) for name, (uses, _) in wanted.items()}
        active = [(name, lo) for name, (_, lo) in wanted.items() if lo < tm]
        if not active:
            return Reads(tables, [], self, store)
        params: dict[str, Any] = {"tm": tm}
        parts = []
        fresh = []
        for k, (name, lo) in enumerate(active):
            table = tables[name]
            table.cover(lo, tm)
            if not table.restored:
                table.restored = True  # once per table: later hours come from reads
                fresh.append((table, lo, tm))
            params[f"lo{k}"] = lo
            parts.append(
                f"SELECT {k} AS t, toUnixTimestamp(hour) AS h, sum(requests), count() FROM {name}"
                f" WHERE hour >= {{lo{k}:DateTime('UTC')}} AND hour < {{tm:DateTime('UTC')}}"
                " GROUP BY h"
            )
        if self.saved is not None and fresh:  # before the check, which then vets them
            self.saved.load(store, fresh)
        rows = store.query(" UNION ALL ".join(parts), params).rows
        self.queries += 1
        counts = [np.zeros(int((tm - lo) / _HOUR), dtype=np.int64) for _, lo in active]
        nrows = [np.zeros_like(c) for c in counts]
        for k, h, n, r in rows:
            i = (int(h) - int(active[k][1].timestamp())) // 3600
            counts[k][i], nrows[k][i] = int(n), int(r)
        reads = []
        for (name, lo), c, r in zip(active, counts, nrows, strict=True):
            reads += tables[name].reads(lo, c, r)
        return Reads(tables, reads, self, store)
