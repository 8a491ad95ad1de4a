"""Turning Python rows into typed Arrow tables that both drivers insert.

Types come from the table's own column list, so callers pass plain Python values
(datetimes, ints, hex ids, dicts) and one conversion serves chDB and ClickHouse alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

from controlplane.errors import QueryError

_WRAPPERS = re.compile(r"^(?:Nullable|LowCardinality)\((.*)\)$")


def _unwrap(ch_type: str) -> str:
    t = ch_type
    while m := _WRAPPERS.match(t):
        t = m.group(1)
    return t


def arrow_type(ch_type: str) -> pa.DataType:
    """Arrow type that ClickHouse casts losslessly into ``ch_type``."""
    t = _unwrap(ch_type)
    if t.startswith("DateTime64"):
        return pa.timestamp("us", tz="UTC")
    if t.startswith("DateTime"):
        return pa.timestamp("s", tz="UTC")
    if t.startswith("FixedString("):
        return pa.binary(int(t[len("FixedString(") : -1]))
    if t.startswith("Map("):
        return pa.map_(pa.string(), pa.string())
    if t.startswith(("Decimal", "Float64")):
        return pa.float64()
    if t == "Float32":
        return pa.float32()
    if t == "Bool":
        return pa.bool_()
    ints = {
        "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(),
        "UInt64": pa.uint64(), "Int8": pa.int8(), "Int16": pa.int16(),
        "Int32": pa.int32(), "Int64": pa.int64(),
    }  # fmt: skip
    if t in ints:
        return ints[t]
    return pa.string()


def _convert(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_fixed_size_binary(typ):
        if isinstance(value, str):
            width = typ.byte_width
            return bytes.fromhex(value).rjust(width, b"\0") if value else b"\0" * width
        return value
    if pa.types.is_timestamp(typ):
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
        return value
    if pa.types.is_map(typ):
        return list(value.items()) if isinstance(value, dict) else value
    if isinstance(value, Decimal):
        return float(value)
    return value


def to_arrow(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], types: dict[str, str]
) -> pa.Table:
    arrays = []
    for i, name in enumerate(columns):
        if name not in types:
            raise QueryError(f"unknown column {name!r}")
        typ = arrow_type(types[name])
        try:
            arrays.append(pa.array([_convert(r[i], typ) for r in rows], type=typ))
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise QueryError(f"column {name!r}: cannot convert value: {exc}") from exc
    return pa.Table.from_arrays(arrays, names=list(columns))
