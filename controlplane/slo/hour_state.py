"""Held hours saved in the store (``slo_hour_state``), so a restart reads only what changed.

Without this, the first cycle after every process start reads 30 days of hourly rollups
(the slowest cycle by far: histogram maps of every hour). After a cycle reads hours,
``HourState.save`` writes one row per table and hour read. A new ``HourCache`` loads
the rows of its tables before its first check; the check then compares each loaded
hour's request count with the store's, exactly as for hours held in memory, and
re-reads the hours that got rows since (ingest lag, a backfill, a restart during an
outage of the collectors). So a cycle after a restart gives what an uncached read gives.

Each row lists its columns (``cols``) by a signature of everything that decides their
values: the column's SQL and parameter and the series it is read for (a split read
fills a column only for the series whose SLOs use it). Rows are keyed by the table, the
store's schema version (a migration can change what rollups hold) and the writer's
column set, so processes (or batches of SLOs with other offsets) reading other column
sets keep their own rows. A start takes, per hour, the row with the most columns its
SLOs read (the newest of those) and restores those columns; a column of a changed or
new SLO (another threshold or selector) is in no row and is read from the rollups, for
every hour, while the others come from the saved row.

Saving is write-behind: ``save`` notes the hours just read, and ``flush`` builds their
rows and writes them, from a thread of its own at the end of a cycle (~40 ms of a first
cycle's ~0.4 s, and nothing in the cycle needs it). The tables keep those hours as read
until their next read, which flushes first (``HourCache.prepare``, before any ``load``
too), and ``Evaluator.close`` flushes.

It is derived data: a failure to load or save is logged and costs a re-read, never a
different answer.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from controlplane import conventions as cv
from controlplane.errors import GovernorError
from controlplane.slo.hours import HourRows, HourTable, Ints
from controlplane.store.base import Store
from controlplane.store.migrate import known_migrations

log = logging.getLogger(__name__)

_SCHEMA = pa.schema([
    ("source", pa.string()), ("signature", pa.string()),
    ("hour", pa.timestamp("s", tz="UTC")), ("requests", pa.uint64()),
    ("cols", pa.list_(pa.string())),
    ("pools", pa.list_(pa.string())), ("models", pa.list_(pa.string())),
    ("tenants", pa.list_(pa.string())), ("vals", pa.list_(pa.int64())),
    ("saved_at", pa.timestamp("us", tz="UTC")),
])  # fmt: skip


class HourState:
    """Loads and saves one store's held hours; ``HourCache`` calls it. Not for calls from
    two threads at once: the evaluator's lock serializes its cycles and ``close``."""

    def __init__(self) -> None:
        self._schema: int | None = None
        self.hours_loaded = 0  # hours taken from saved rows
        self.hours_saved = 0  # hour rows written
        # hours noted by ``save``, not written yet, with when they were read
        self._unsaved: list[tuple[list[tuple[HourTable, list[int]]], datetime]] = []
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def prefix(self, table: HourTable) -> str:
        """What every saved row of the table starts its signature with: the table's name
        and the schema version (a migration can change what the rollups hold). The
        version is this Governor's newest migration, not a query: every store it
        evaluates is migrated to it at open, and a newer one is refused."""
        if self._schema is None:
            self._schema = known_migrations()[-1].version
        return _digest((table.table, self._schema), 32) + ":"

    def signature(self, table: HourTable, columns: list[str]) -> str:
        """The rows this process writes: the prefix and its column set (``columns``), so
        processes (or batches of SLOs) reading other column sets keep their own rows."""
        return self.prefix(table) + _digest(columns, 16)

    @staticmethod
    def columns(table: HourTable) -> list[str]:
        """Each column's signature: its SQL, parameter and the series it is read for."""
        return [_digest((col, sorted(table.uses[col])), 16) for col in table.cols]

    def load(self, store: Store, tables: Sequence[tuple[HourTable, datetime, datetime]]) -> None:
        """Restore the saved hours of ``[lo, tm)`` into each table (laid over that range),
        one query for all. A table whose rows do not fit is left to be read."""
        if not tables:
            return
        params: dict[str, Any] = {}
        conds = []
        try:
            wants = []
            for k, (table, lo, tm) in enumerate(tables):
                params |= {f"t{k}": table.table, f"s{k}": self.prefix(table),
                           f"w{k}": self.columns(table), f"lo{k}": lo, f"tm{k}": tm}  # fmt: skip
                conds.append(f"(source = {{t{k}:String}} AND startsWith(signature, {{s{k}:String}})"
                             f" AND hour >= {{lo{k}:DateTime('UTC')}}"
                             f" AND hour < {{tm{k}:DateTime('UTC')}})")  # fmt: skip
                wants.append(f"source = {{t{k}:String}}, {{w{k}:Array(String)}}")
            # Per hour, the row (of any column set) with the most columns this process
            # reads, the newest of those.
            useful = f"length(arrayIntersect(cols, multiIf({', '.join(wants)}, [])))"
            rows = store.query_arrow(
                "SELECT toString(source) AS source, toUInt32(toUnixTimestamp(hour)) AS h, "
                f"requests, cols, pools, models, tenants, vals FROM {cv.SLO_HOUR_STATE} FINAL "
                f"WHERE {' OR '.join(conds)} "
                f"ORDER BY source, hour, {useful} DESC, saved_at DESC LIMIT 1 BY source, hour",
                params,
            )
        except GovernorError as exc:
            log.warning("saved SLO hours not loaded (they are read again): %s", exc)
            return
        # Rows come sorted by table: each table's are a slice (no Arrow compute kernels,
        # whose first calls in a process cost up to ~50 ms).
        sources = rows["source"].to_pylist()
        for table, _, _ in tables:
            try:
                first = sources.index(table.table) if table.table in sources else 0
                mine = rows.slice(first, sources.count(table.table))
                index = {sig: k for k, sig in enumerate(self.columns(table))}
                for sigs, same in _by_columns(mine):
                    cols = [index.get(sig, -1) for sig in sigs]
                    self.hours_loaded += len(table.restore(_rows(same, len(cols)), cols))
            except (ValueError, pa.ArrowException) as exc:
                log.warning("saved SLO hours of %s not loaded (they are read again): %s",
                            table.table, exc)  # fmt: skip

    def save(self, store: Store, reads: Sequence[tuple[HourTable, list[int]]]) -> None:
        """Note the hours ``idxs`` of each table as just read, for ``flush``."""
        with self._lock:
            self._unsaved.append((list(reads), datetime.now(UTC)))

    def flush(self, store: Store, *, background: bool = False) -> None:
        """Write the hours ``save`` noted, one insert for all: now, or from a thread
        (``background``) that the next ``flush`` waits for. Never raises."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        with self._lock:
            data, self._unsaved = self._unsaved, []
        if not data:
            return
        if not background:
            self._write(store, data)
            return
        writer = threading.Thread(target=self._write, args=(store, data),
                                  name="slo-hours-save", daemon=True)  # fmt: skip
        with self._lock:
            self._writer = writer
        writer.start()

    def _write(
        self, store: Store, noted: list[tuple[list[tuple[HourTable, list[int]]], datetime]]
    ) -> None:
        try:
            built = (self._table(t, idxs, at) for reads, at in noted for t, idxs in reads)
            data = [p for p in built if p.num_rows]
            if not data:
                return
            store.insert_arrow(cv.SLO_HOUR_STATE, pa.concat_tables(data))
            self.hours_saved += sum(p.num_rows for p in data)
        except GovernorError as exc:
            log.warning("SLO hours not saved (a restart reads them again): %s", exc)
        except Exception:  # a bug, perhaps on the writer thread: said, not raised
            log.exception("SLO hours not saved (a restart reads them again)")

    def _table(self, table: HourTable, idxs: list[int], now: datetime) -> pa.Table:
        rows = table.saved(idxs)
        n = len(rows.hours)
        cols = self.columns(table)
        return pa.table(
            [pa.array([table.table] * n), pa.array([self.signature(table, cols)] * n),
             pa.array(rows.hours, type=pa.timestamp("s", tz="UTC")),
             pa.array(rows.counts.astype(np.uint64)),
             pa.array([cols] * n, type=pa.list_(pa.string())),
             *(_lists(rows.offsets, [key[j] for key in rows.names]) for j in range(3)),
             _lists(rows.offsets * rows.vals.shape[1], rows.vals.ravel()),
             pa.array([now] * n, type=pa.timestamp("us", tz="UTC"))],
            schema=_SCHEMA,
        )  # fmt: skip


def _lists(offsets: Ints, values: object) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values))


def _by_columns(t: pa.Table) -> list[tuple[list[str], pa.Table]]:
    """Runs of consecutive rows saved with the same columns (usually one run)."""
    if not t.num_rows:
        return []
    lists = t["cols"].combine_chunks()
    flat = lists.flatten().to_numpy(zero_copy_only=False)
    offsets = np.asarray(lists.offsets) - lists.offsets[0].as_py()
    keys = [tuple(flat[a:b]) for a, b in itertools.pairwise(offsets.tolist())]
    bounds = [0, *(k for k in range(1, len(keys)) if keys[k] != keys[k - 1]), len(keys)]
    return [(list(keys[a]), t.slice(a, b - a)) for a, b in itertools.pairwise(bounds)]


def _rows(t: pa.Table, ncols: int) -> HourRows:
    """Saved rows as ``HourTable.restore`` takes them; ValueError if they do not fit."""
    lists = [t[c].combine_chunks() for c in ("pools", "models", "tenants", "vals")]
    # from 0 whatever slice of the query's rows ``t`` is (combine_chunks rebases today)
    offsets = [np.asarray(a.offsets, dtype=np.int64) for a in lists]
    offsets = [o - o[0] for o in offsets]
    if not all(np.array_equal(offsets[0], o) for o in offsets[1:3]):
        raise ValueError("saved series names of unequal lengths")
    if not np.array_equal(offsets[0] * ncols, offsets[3]):
        raise ValueError(f"saved values do not fit their series x {ncols} columns")
    pools, models, tenants = (a.flatten().to_pylist() for a in lists[:3])
    return HourRows(
        np.asarray(t["h"], dtype=np.int64), np.asarray(t["requests"], dtype=np.int64),
        offsets[0], list(zip(pools, models, tenants, strict=True)),
        np.asarray(lists[3].flatten(), dtype=np.int64).reshape(-1, ncols),
    )  # fmt: skip


def _digest(value: object, size: int) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:size]
