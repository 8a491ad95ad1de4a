"""Several reads of one cycle run as ONE ``UNION ALL`` statement.

The engine runs the branches of a UNION ALL side by side, so the edge minutes and the
hours read after a start or an hour turn share the cores instead of queueing one
after the other. Every branch returns ``a, b, c, key, v0..vN`` (three strings, a UInt64
key, UInt64 values); narrower branches are padded with zeros, and each branch's
parameters are renamed ``p{k}_{name}`` so they cannot collide.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from controlplane.store.base import Store

_PARAM = re.compile(r"\{(\w+):")


@dataclass(frozen=True)
class Rows:
    """One part's rows: the three strings, the key and ``vals[row, column]``."""

    a: npt.NDArray[np.object_]
    b: npt.NDArray[np.object_]
    c: npt.NDArray[np.object_]
    key: npt.NDArray[np.int64]
    vals: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.key)


class Part(Protocol):
    @property
    def width(self) -> int:
        """Number of value columns."""
        ...

    def select(self, params: dict[str, Any]) -> tuple[str, str]:
        """A SELECT returning ``a, b, c, key, v0..v{width-1}`` in two pieces: its column
        list and the rest (``FROM ...``); binds its ``params``."""
        ...

    def take(self, rows: Rows) -> None:
        """This part's rows (``rows.vals`` has its ``width`` columns)."""
        ...


def _rename(sql: str, prefix: str) -> str:
    return _PARAM.sub(lambda m: "{" + prefix + m.group(1) + ":", sql)


def run_parts(store: Store, parts: Sequence[Part]) -> None:
    if not parts:
        return
    width = max(p.width for p in parts)
    params: dict[str, Any] = {}
    selects = []
    for k, part in enumerate(parts):
        own: dict[str, Any] = {}
        head, rest = (_rename(sql, f"p{k}_") for sql in part.select(own))
        params |= {f"p{k}_{name}": v for name, v in own.items()}
        pad = "".join(", toUInt64(0)" for _ in range(part.width, width))
        # The part's own SELECT with the part number and padding added, not wrapped in a
        # subquery: ~25 ms less for a first cycle's statement of nine parts.
        selects.append(f"SELECT toUInt32({k}) AS part, {head}{pad} {rest}")
    # Arrow straight to numpy: a DataFrame and its groupby cost ~20 ms more a cycle.
    t = store.query_arrow("\nUNION ALL\n".join(selects), params)
    cols = [t.column(i).to_numpy() for i in range(t.num_columns)]
    part_of = cols[0].astype(np.int64)
    order = np.argsort(part_of, kind="stable")
    bounds = np.searchsorted(part_of[order], np.arange(len(parts) + 1))
    strs = [np.asarray(c, dtype=object)[order] for c in cols[1:4]]
    key = cols[4].astype(np.int64)[order]
    vals = (np.column_stack(cols[5:]) if width else np.zeros((len(key), 0))).astype(np.int64)
    vals = vals[order]
    for k, part in enumerate(parts):
        i = slice(int(bounds[k]), int(bounds[k + 1]))
        part.take(Rows(strs[0][i], strs[1][i], strs[2][i], key[i], vals[i, : part.width]))
