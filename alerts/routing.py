"""Routes: which receivers an alert goes to, and which group it joins there.

A flat, ordered list under an implicit root (Alertmanager's tree with one level): an
alert goes to every matching route up to and including the first matching route whose
``continue`` is false. Group keys follow Alertmanager's shape
``{}/{<route matchers>}:{<group labels>}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from controlplane.config import AlertRoute

ALL_LABELS = "..."


@dataclass(frozen=True)
class Route:
    index: int
    receiver: str
    match: tuple[tuple[str, str], ...]
    match_re: tuple[tuple[str, re.Pattern[str]], ...]
    group_by: tuple[str, ...]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    continue_: bool

    @classmethod
    def from_config(cls, index: int, cfg: AlertRoute) -> Route:
        return cls(
            index=index,
            receiver=cfg.receiver,
            match=tuple(sorted(cfg.match.items())),
            # Anchored both ends, as Alertmanager anchors its regex matchers.
            match_re=tuple((k, re.compile(f"^(?:{v})$")) for k, v in sorted(cfg.match_re.items())),
            group_by=tuple(cfg.group_by),
            group_wait_s=cfg.group_wait_s,
            group_interval_s=cfg.group_interval_s,
            repeat_interval_s=cfg.repeat_interval_s,
            continue_=cfg.continue_,
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k, "") != v for k, v in self.match):
            return False
        return all(p.match(labels.get(k, "")) for k, p in self.match_re)

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if ALL_LABELS in self.group_by:
            return dict(labels)
        return {k: labels[k] for k in self.group_by if k in labels}

    def key(self) -> str:
        parts = [f"{k}={json.dumps(v)}" for k, v in self.match]
        parts += [f"{k}=~{json.dumps(p.pattern[4:-2])}" for k, p in self.match_re]
        return "{}/{" + ",".join(parts) + "}"

    def group_key(self, labels: Mapping[str, str]) -> str:
        gl = self.group_labels(labels)
        return _group_key(self.key(), tuple(sorted(gl.items())))


@lru_cache(maxsize=65536)
def _group_key(route_key: str, items: tuple[tuple[str, str], ...]) -> str:
    inner = ", ".join(f"{k}={json.dumps(v)}" for k, v in items)
    return f"{route_key}:{{{inner}}}"


def compile_routes(cfgs: Sequence[AlertRoute]) -> list[Route]:
    return [Route.from_config(i, c) for i, c in enumerate(cfgs)]


def routes_for(routes: Sequence[Route], labels: Mapping[str, str]) -> list[Route]:
    out = []
    for r in routes:
        if r.matches(labels):
            out.append(r)
            if not r.continue_:
                break
    return out
