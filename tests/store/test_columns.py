"""Python values become the Arrow types ClickHouse columns expect, without surprises."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from controlplane.errors import QueryError
from controlplane.store.columns import to_arrow

TS = "DateTime64(6, 'UTC')"


@pytest.mark.parametrize(
    "value",
    [1_700_000_000.0, 1_700_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)],
    ids=["epoch seconds as float", "epoch seconds as int", "aware datetime"],
)
def test_timestamps_given_as_epoch_seconds_or_datetimes_mean_the_same_instant(value) -> None:  # type: ignore[no-untyped-def]
    col = to_arrow(["ts"], [(value,), (None,)], {"ts": TS}).column("ts").to_pylist()
    assert col == [datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), None]


def test_mixed_timestamp_values_in_one_batch_all_convert() -> None:
    rows = [(1_700_000_000.5,), (datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),)]
    col = to_arrow(["ts"], rows, {"ts": TS}).column("ts").to_pylist()
    assert [c.timestamp() for c in col] == [1_700_000_000.5, 1_700_000_000.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.000000007, Decimal("1.000000007")),
        (Decimal("0.1234567891"), Decimal("0.123456789")),
        ("2.5", Decimal("2.500000000")),
        (None, None),
    ],  # fmt: skip
    ids=["float keeps its shortest decimal", "extra digits round half-even", "text", "null"],
)
def test_decimals_are_exact(value: object, expected: Decimal | None) -> None:
    col = to_arrow(["c"], [(value,)], {"c": "Nullable(Decimal64(9))"}).column("c").to_pylist()
    assert col == [expected]


def test_hex_ids_become_fixed_bytes_and_empty_ids_zero_bytes() -> None:
    t = to_arrow(["t"], [("0af7651916cd43dd8448eb211c80319c",), ("",)], {"t": "FixedString(16)"})
    assert t.column("t").to_pylist() == [
        bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
        b"\0" * 16,
    ]


@pytest.mark.parametrize(
    ("column", "ch_type", "value", "fragment"),
    [
        ("c", "Decimal64(9)", "lots", "column 'c': cannot convert value"),
        ("t", "FixedString(16)", "zz", "column 't': cannot convert value"),
        ("n", "UInt32", "seven", "column 'n': cannot convert value"),
    ],  # fmt: skip
    ids=["not a number for a decimal", "not hex for an id", "text for an integer"],
)
def test_bad_values_name_the_column(
    column: str, ch_type: str, value: object, fragment: str
) -> None:
    with pytest.raises(QueryError, match=fragment):
        to_arrow([column], [(value,)], {column: ch_type})
