"""Prometheus text and OpenMetrics into an index of samples, with prometheus-client's parsers.

Adapters look samples up by *sample* name (``vllm:prompt_tokens_total``, ``..._sum``).
Exporters disagree on whether counters carry ``_total`` (TGI's Rust exporter and
dcgm-exporter do not); prometheus-client's text parser names every counter sample
``<family>_total`` whatever the exposition said, so adapters always ask for ``_total``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from collector.errors import ScrapeError, ScrapeParseError

OPENMETRICS_TYPE = "application/openmetrics-text"
# What the scraper asks for: the classic text format only. prometheus-client servers
# (vLLM, SGLang) switch to OpenMetrics whenever the Accept header mentions it, whatever its
# q-value, and recent releases then escape ``:`` to ``_`` in sample names
# (``vllm_num_requests_running``). A body that comes back as OpenMetrics anyway is parsed
# as such, and lookups accept the escaped spelling too.
ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"


__all__ = ["ScrapeError", "ScrapeParseError", "Samples", "Series", "parse", "is_openmetrics"]

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Series:
    labels: dict[str, str]
    value: float


@dataclass(slots=True)
class Samples:
    """Every sample of one scrape, by sample name, plus each family's declared type."""

    by_name: dict[str, list[Series]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> list[Series]:
        return self.by_name.get(name) or self.by_name.get(name.replace(":", "_"), [])

    def first(self, *names: str) -> tuple[str, list[Series]] | None:
        """The first of ``names`` present (for renamed metrics: new name, then the old)."""
        for n in names:
            series = self.by_name.get(n) or self.by_name.get(n.replace(":", "_"))
            if series:
                return n, series
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_name.values())


def is_openmetrics(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";")[0].strip().lower() == OPENMETRICS_TYPE


def parse(text: str, content_type: str | None = None) -> Samples:
    """Parse one exposition; OpenMetrics when the content type says so."""
    families: Iterable[object]
    try:
        if is_openmetrics(content_type):
            families = list(openmetrics_families(text))  # type: ignore[no-untyped-call]
        else:
            families = list(text_families(text))
    except Exception as exc:  # the parsers raise ValueError, KeyError, IndexError...
        raise ScrapeParseError(f"invalid metrics exposition: {exc}") from exc
    out = Samples()
    for fam in families:
        name = getattr(fam, "name", "")
        out.types[name] = getattr(fam, "type", "unknown")
        for s in getattr(fam, "samples", ()):
            out.by_name.setdefault(s.name, []).append(Series(dict(s.labels), float(s.value)))
    return out
