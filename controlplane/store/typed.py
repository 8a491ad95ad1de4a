"""What both drivers share: Arrow results as rows, and row inserts typed by the table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from controlplane.errors import QueryError
from controlplane.store.base import QueryResult, check_identifier
from controlplane.store.columns import to_arrow


def result_from_arrow(table: pa.Table) -> QueryResult:
    cols = table.column_names
    data = table.to_pydict()
    rows = list(zip(*(data[c] for c in cols), strict=True)) if cols else []
    return QueryResult(columns=cols, rows=rows)


class TypedInserts:
    """``insert_rows`` for drivers that insert Arrow: types come from ``system.columns``.

    Subclasses provide ``database``, ``query`` and ``_insert_arrow``.
    """

    database: str
    _types: dict[str, dict[str, str]]

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        raise NotImplementedError

    def _insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None) -> None:
        raise NotImplementedError

    def column_types(self, table: str) -> dict[str, str]:
        check_identifier(table, "table name")
        if table not in self._types:
            res = self.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} "
                "AND table = {t:String} ORDER BY position",
                {"db": self.database, "t": table},
            )
            if not res.rows:
                raise QueryError(f"unknown table {table!r} in database {self.database!r}")
            self._types[table] = {r[0]: r[1] for r in res.rows}
        return self._types[table]

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        if data.num_rows == 0:
            return
        known = self.column_types(table)
        unknown = [c for c in data.column_names if c not in known]
        if unknown:
            raise QueryError(f"table {table!r} has no column(s) {', '.join(unknown)}")
        self._insert_arrow(table, data, dedup_token)

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> None:
        if not rows:
            return
        self._insert_arrow(table, to_arrow(columns, rows, self.column_types(table)), dedup_token)
