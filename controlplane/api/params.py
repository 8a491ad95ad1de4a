"""Parsing of common query parameters (time bounds) with errors that name the parameter."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import HTTPException


def parse_time(value: str | None, name: str) -> datetime | None:
    """Accept RFC 3339 (``2026-11-22T01:00:00Z``) or unix seconds."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            400, f"{name}: expected RFC 3339 time or unix seconds, got {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
