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
from typing import Any, Protocol

import pandas as pd

from controlplane.store.base import Store

_PARAM = re.compile(r"\{(\w+):")


class Part(Protocol):
    @property
    def width(self) -> int:
        """Number of value columns."""
        ...

    def select(self, params: dict[str, Any]) -> str:
        """SQL returning ``a, b, c, key, v0..v{width-1}``; binds its ``params``."""
        ...

    def take(self, rows: pd.DataFrame) -> None:
        """This part's rows (columns ``part, a, b, c, key, v0...``; extra values are 0)."""
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
        sql = _rename(part.select(own), f"p{k}_")
        params |= {f"p{k}_{name}": v for name, v in own.items()}
        pad = "".join(", toUInt64(0)" for _ in range(part.width, width))
        selects.append(f"SELECT toUInt32({k}) AS part, *{pad} FROM ({sql})")
    df = store.query_df("\nUNION ALL\n".join(selects), params)
    by_part = df.groupby(df.columns[0], sort=False) if not df.empty else None
    for k, part in enumerate(parts):
        if by_part is not None and k in by_part.groups:
            part.take(by_part.get_group(k))
        else:
            part.take(df.iloc[0:0])
