"""Helpers shared by the writer tests."""

from __future__ import annotations

from typing import Any

from controlplane.errors import QueryError


def retryable(exc: BaseException) -> bool:
    """The writer's retry rule as the drivers give it: bad data is not retried."""
    return not isinstance(exc, QueryError)


def counts(store: Any) -> tuple[int, int]:
    """(rows, distinct span ids) in ``requests``: duplicates show as a difference."""
    r = store.query("SELECT count(), uniqExact(span_id) FROM requests").rows[0]
    return int(r[0]), int(r[1])
