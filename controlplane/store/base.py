"""The ``Store`` protocol: what every driver (embedded chDB, ClickHouse server) offers.

SQL is ClickHouse SQL. Parameters are bound server-side with ``{name:Type}``
placeholders, never formatted into the text. Table names in SQL are unqualified: each
driver runs statements in its own database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from controlplane.errors import QueryError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PARTITION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise; used for table/db names."""
    if not _IDENT.match(name):
        raise QueryError(f"invalid {what} {name!r}: expected letters, digits and _")
    return name


def optimize_sql(table: str, partition_id: str, database: str = "") -> str:
    """``OPTIMIZE TABLE ... PARTITION ID '...' FINAL``: the statement takes no bound
    parameters, so the names are checked as identifiers and the id by its pattern."""
    check_identifier(table, "table name")
    if not _PARTITION_ID.match(partition_id):
        raise QueryError(f"invalid partition id {partition_id!r} of {table}")
    qualified = f"{check_identifier(database, 'database name')}.{table}" if database else table
    return f"OPTIMIZE TABLE {qualified} PARTITION ID '{partition_id}' FINAL"


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class StoreStatus:
    ok: bool
    driver: str
    database: str
    schema_version: int
    detail: str = ""


class Store(Protocol):
    driver: str
    database: str

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, ALTER, INSERT ... SELECT)."""
        ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult: ...

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame: ...

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """The result as Arrow: array columns stay columnar (``query_df`` makes an object
        per cell, ~100 ms for 1,500 rows of arrays)."""
        ...

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> None:
        """Insert rows; with ``dedup_token`` a repeated insert of the same batch is a no-op."""
        ...

    def insert_df(
        self, table: str, df: pd.DataFrame, *, dedup_token: str | None = None
    ) -> None: ...

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        """Insert an Arrow table whose columns already have the table's types (fast path)."""
        ...

    def optimize_partition(self, table: str, partition_id: str) -> None:
        """Merge one partition of ``table`` into one part (``OPTIMIZE ... FINAL``) without
        holding up the store's other calls; raises QueryError if the merge fails."""
        ...

    def status(self) -> StoreStatus: ...

    def close(self) -> None: ...
