"""Scrape targets: a static list plus Prometheus ``file_sd`` files re-read when they change.

A file_sd file is JSON or YAML: ``[{"targets": ["host:port", ...], "labels": {...}}]``.
Governor reads these labels: ``kind`` (vllm, sglang, tgi, triton, dcgm, agent; required
unless the file's group says it), ``pool``, ``replica``, ``model``, ``node``,
``__scheme__`` (http by default) and ``__metrics_path__`` (``/metrics`` by default), the
same meta labels Prometheus honours. A bad file is logged with its name and the problem,
and the targets it gave before stay in place: a typo during an edit must not make a pool
disappear from the policy's view.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from collector.errors import DiscoveryError

log = logging.getLogger(__name__)

KINDS = ("vllm", "sglang", "tgi", "triton", "dcgm", "agent")
ENGINE_KINDS = ("vllm", "sglang", "tgi", "triton")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    kind: str
    pool: str = ""
    replica: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = "static"  # "static" or the file_sd path

    @property
    def key(self) -> str:
        return self.url

    @property
    def instance(self) -> str:
        """host:port, Prometheus's ``instance``; an engine's replica name by default."""
        return urlsplit(self.url).netloc


def _target_from_group(address: str, labels: Mapping[str, str], source: str) -> Target:
    kind = labels.get("kind", "")
    if kind not in KINDS:
        raise DiscoveryError(
            f"{source}: target {address!r}: label 'kind' must be one of {', '.join(KINDS)}"
            f" (got {kind!r})"
        )
    if "://" in address:
        raise DiscoveryError(
            f"{source}: target {address!r}: expected host:port (put the scheme in __scheme__)"
        )
    scheme = labels.get("__scheme__", "http")
    if scheme not in ("http", "https"):
        raise DiscoveryError(f"{source}: target {address!r}: __scheme__ must be http or https")
    path = labels.get("__metrics_path__", "/metrics")
    if not path.startswith("/"):
        path = "/" + path
    plain = {k: v for k, v in labels.items() if not k.startswith("__")}
    return Target(
        url=f"{scheme}://{address}{path}",
        kind=kind,
        pool=plain.get("pool", ""),
        replica=plain.get("replica", ""),
        labels=plain,
        source=source,
    )


def parse_file_sd(text: str, source: str) -> list[Target]:
    """Targets from one file_sd document (JSON is YAML, so one parser reads both)."""
    try:
        data = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{source}: not valid JSON/YAML: {exc}") from exc
    if not isinstance(data, list):
        raise DiscoveryError(f"{source}: expected a list of target groups at the top level")
    out: list[Target] = []
    for i, group in enumerate(data):
        if not isinstance(group, dict):
            raise DiscoveryError(f"{source}: [{i}]: expected a mapping with 'targets'")
        addrs = group.get("targets")
        labels = group.get("labels", {}) or {}
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise DiscoveryError(f"{source}: [{i}].targets: expected a list of host:port strings")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise DiscoveryError(f"{source}: [{i}].labels: expected a mapping of strings")
        for a in addrs:
            out.append(_target_from_group(a, labels, f"{source}: [{i}]"))
    return out


def _same_source(t: Target, path: str) -> Target:
    return Target(t.url, t.kind, t.pool, t.replica, t.labels, path)


class FileDiscovery:
    """Watches file_sd files by mtime; keeps the last good targets of each file."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self._paths = [str(p) for p in paths]
        self._stamp: dict[str, tuple[float, int]] = {}
        self._targets: dict[str, list[Target]] = {}
        self._errors: dict[str, str] = {}
        self._on_error = on_error

    @property
    def errors(self) -> dict[str, str]:
        """The last problem per file (cleared when the file reads well again)."""
        return dict(self._errors)

    def _fail(self, path: str, message: str) -> None:
        if self._errors.get(path) != message:
            log.error("file_sd %s: %s (keeping its previous targets)", path, message)
        self._errors[path] = message
        if self._on_error is not None:
            self._on_error(path, message)

    def refresh(self) -> bool:
        """Re-read files whose mtime or size changed; True when the target set changed."""
        changed = False
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                self._fail(path, f"cannot read: {exc.strerror}")
                continue
            stamp = (st.st_mtime, st.st_size)
            if self._stamp.get(path) == stamp:
                continue
            self._stamp[path] = stamp
            try:
                text = Path(path).read_text()
                targets = [_same_source(t, path) for t in parse_file_sd(text, path)]
            except OSError as exc:
                self._fail(path, f"cannot read: {exc.strerror}")
                continue
            except DiscoveryError as exc:
                # The message already starts with the path; keep only the problem.
                self._fail(path, str(exc).removeprefix(f"{path}: "))
                continue
            self._errors.pop(path, None)
            if targets != self._targets.get(path):
                self._targets[path] = targets
                changed = True
        return changed

    def targets(self) -> list[Target]:
        return [t for p in self._paths for t in self._targets.get(p, [])]


def static_targets(items: Iterable[Mapping[str, Any]]) -> list[Target]:
    """Targets from config entries ``{url, kind, pool, replica, model, node}``."""
    out = []
    for item in items:
        url = str(item["url"])
        labels = {k: str(item[k]) for k in ("model", "node") if item.get(k)}
        out.append(
            Target(
                url=url,
                kind=str(item["kind"]),
                pool=str(item.get("pool", "")),
                replica=str(item.get("replica", "")),
                labels=labels,
            )
        )
    return out


def merge(*groups: Iterable[Target]) -> list[Target]:
    """All targets, first occurrence of each URL wins (static before discovered)."""
    seen: dict[str, Target] = {}
    for group in groups:
        for t in group:
            seen.setdefault(t.key, t)
    return list(seen.values())
