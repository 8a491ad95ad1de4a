"""Turning Python rows into typed Arrow tables that both drivers insert.

Types come from the table's own column list, so callers pass plain Python values
(datetimes, ints, hex ids, dicts) and one conversion serves chDB and ClickHouse alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from controlplane.errors import QueryError

_WRAPPERS = re.compile(r"^(?:Nullable|LowCardinality)\((.*)\)$")


_SIMPLE_AGG = re.compile(r"^SimpleAggregateFunction\(\w+,\s*(.*)\)$")
_DECIMAL = re.compile(r"^Decimal(32|64|128|256)?\((\d+)(?:,\s*(\d+))?\)$")
_DECIMAL_PRECISION = {"32": 9, "64": 18, "128": 38, "256": 76}


def _unwrap(ch_type: str) -> str:
    t = ch_type
    while m := _WRAPPERS.match(t) or _SIMPLE_AGG.match(t):
        t = m.group(1)
    return t


def _split_args(inner: str) -> list[str]:
    """Top-level comma split of type arguments: ``K, Map(A, B)`` -> ``[K, Map(A, B)]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    parts.append(inner[start:].strip())
    return parts


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
        key, value = _split_args(t[len("Map(") : -1])
        return pa.map_(arrow_type(key), arrow_type(value))
    if t.startswith("Array("):
        return pa.list_(arrow_type(t[len("Array(") : -1]))
    if m := _DECIMAL.match(t):
        # Exact decimals: a float64 detour would truncate (1.000000007 -> 1.000000006).
        if m.group(1):
            precision, scale = _DECIMAL_PRECISION[m.group(1)], int(m.group(2))
        else:
            precision, scale = int(m.group(2)), int(m.group(3) or 0)
        if precision > 38:
            return pa.decimal256(precision, scale)
        return pa.decimal128(precision, scale)
    if t == "Float64":
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


def _to_fixed(width: int) -> Callable[[Any], Any]:
    zero = b"\0" * width

    def conv(value: Any) -> Any:
        if isinstance(value, str):
            return bytes.fromhex(value).rjust(width, b"\0") if value else zero
        return value

    return conv


def _to_decimal(typ: pa.Decimal128Type | pa.Decimal256Type) -> Callable[[Any], Any]:
    quantum = Decimal(1).scaleb(-typ.scale)

    def conv(value: Any) -> Any:
        if value is None:
            return None
        try:
            if isinstance(value, float):
                value = Decimal(repr(value))  # the shortest decimal that is this float
            elif not isinstance(value, Decimal):
                value = Decimal(value)
            return value.quantize(quantum, rounding=ROUND_HALF_EVEN)
        except (ArithmeticError, TypeError):
            raise ValueError(f"{value!r} is not a finite decimal number") from None

    return conv


def _converter(typ: pa.DataType) -> Callable[[Any], Any] | None:
    """A per-value converter for ``typ``, or None when Arrow takes the values as they are."""
    if pa.types.is_fixed_size_binary(typ):
        return _to_fixed(typ.byte_width)
    if pa.types.is_timestamp(typ):
        return lambda v: datetime.fromtimestamp(v, tz=UTC) if isinstance(v, int | float) else v
    if pa.types.is_map(typ):
        kc, vc = _converter(typ.key_type), _converter(typ.item_type)

        def conv_map(value: Any) -> Any:
            items = value.items() if isinstance(value, dict) else value
            if kc is None and vc is None:
                return list(items)
            return [(kc(k) if kc else k, vc(v) if vc else v) for k, v in items]

        return conv_map
    if pa.types.is_list(typ):
        ic = _converter(typ.value_type)
        return None if ic is None else (lambda v: [None if x is None else ic(x) for x in v])
    if pa.types.is_decimal(typ):
        return _to_decimal(typ)
    if pa.types.is_floating(typ):
        return lambda v: float(v) if isinstance(v, Decimal) else v
    return None


def _column(values: list[Any], typ: pa.DataType) -> pa.Array:
    # Fast path: Arrow converts plain Python values in C; fall back per value on mismatch.
    conv = _converter(typ)
    if conv is None:
        return pa.array(values, type=typ)
    if pa.types.is_decimal(typ) and all(v is None or type(v) is float for v in values):
        # Arrow's cast rounds half-even at the scale, like Decimal.quantize above.
        return pc.cast(pa.array(values, type=pa.float64()), typ)
    if pa.types.is_timestamp(typ) and all(v is None or isinstance(v, datetime) for v in values):
        # Only datetimes go straight in: Arrow would read a number as a count of the
        # type's unit (microseconds), while callers mean epoch seconds.
        return pa.array(values, type=typ)
    return pa.array([None if v is None else conv(v) for v in values], type=typ)


def to_arrow(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], types: dict[str, str]
) -> pa.Table:
    arrays = []
    for i, name in enumerate(columns):
        if name not in types:
            raise QueryError(f"unknown column {name!r}")
        typ = arrow_type(types[name])
        try:
            arrays.append(_column([r[i] for r in rows], typ))
        except (pa.ArrowException, ValueError, TypeError, ArithmeticError) as exc:
            raise QueryError(f"column {name!r}: cannot convert value: {exc}") from exc
    return pa.Table.from_arrays(arrays, names=list(columns))
