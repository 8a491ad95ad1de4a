"""Silences: time-bounded label matchers that mute notifications.

The wire shape is Alertmanager's API v2 silence: ``{"matchers": [{"name", "value",
"isRegex", "isEqual"}], "startsAt", "endsAt", "createdBy", "comment"}``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from alerts.errors import InvalidInput
from alerts.model import rfc3339

_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Matcher:
    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.name, "")
        hit = re.fullmatch(self.value, have) is not None if self.is_regex else have == self.value
        return hit if self.is_equal else not hit

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.is_regex,
            "isEqual": self.is_equal,
        }


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    updated_at: float

    def state(self, now: float) -> str:
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "pending"

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return self.state(now) == "active" and all(m.matches(labels) for m in self.matchers)

    def expire(self, now: float) -> Silence:
        if now >= self.ends_at:
            return self
        # As Alertmanager: a silence that has not started yet starts and ends now.
        return replace(self, starts_at=min(self.starts_at, now), ends_at=now, updated_at=now)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": [m.as_dict() for m in self.matchers],
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
            "createdBy": self.created_by,
            "comment": self.comment,
            "updatedAt": rfc3339(self.updated_at),
            "status": {"state": self.state(now)},
        }


def _time(value: Any, field: str, problems: list[str]) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is not None:
                return dt.timestamp()
    problems.append(
        f"{field}: expected an RFC 3339 time with a zone or unix seconds, got {value!r}"
    )
    return None


def parse_matchers(raw: Any, problems: list[str]) -> tuple[Matcher, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("matchers: expected a non-empty list of {name, value, isRegex, isEqual}")
        return ()
    out = []
    for i, m in enumerate(raw):
        where = f"matchers[{i}]"
        if not isinstance(m, dict):
            problems.append(f"{where}: expected an object")
            continue
        name, value = m.get("name"), m.get("value")
        is_regex, is_equal = m.get("isRegex", False), m.get("isEqual", True)
        if not isinstance(name, str) or not _LABEL.match(name):
            problems.append(f"{where}.name: expected a label name, got {name!r}")
            continue
        if not isinstance(value, str):
            problems.append(f"{where}.value: expected a string, got {value!r}")
            continue
        if not isinstance(is_regex, bool) or not isinstance(is_equal, bool):
            problems.append(f"{where}: isRegex and isEqual must be true or false")
            continue
        if is_regex:
            try:
                re.compile(value)
            except re.error as exc:
                problems.append(f"{where}.value: invalid regular expression: {exc}")
                continue
        out.append(Matcher(name, value, is_regex, is_equal))
    if out and all(m.matches({}) for m in out):
        # Alertmanager refuses these: they would silence every alert.
        problems.append("matchers: at least one matcher must not match the empty label set")
    return tuple(out)


def parse_silence(data: Any, *, now: float, created_by: str = "") -> Silence:
    """Validate a silence request; raises ``InvalidInput`` listing every problem."""
    if not isinstance(data, dict):
        raise InvalidInput(["body: expected a JSON object"])
    problems: list[str] = []
    matchers = parse_matchers(data.get("matchers"), problems)
    starts = _time(data["startsAt"], "startsAt", problems) if "startsAt" in data else now
    ends = _time(data.get("endsAt"), "endsAt", problems) if "endsAt" in data else None
    if "endsAt" not in data:
        problems.append("endsAt: required (silences are time-bounded)")
    if starts is not None and ends is not None:
        if ends <= starts:
            problems.append("endsAt: must be after startsAt")
        elif ends <= now:
            problems.append("endsAt: must be in the future")
    comment = data.get("comment", "")
    author = data.get("createdBy", created_by)
    if not isinstance(comment, str) or not isinstance(author, str):
        problems.append("comment and createdBy must be strings")
    if problems:
        raise InvalidInput(problems)
    assert starts is not None and ends is not None
    return Silence(
        id=str(uuid.uuid4()),
        matchers=matchers,
        starts_at=max(starts, now) if starts < now else starts,
        ends_at=ends,
        created_by=str(author),
        comment=str(comment),
        updated_at=now,
    )
