"""SLO specs: YAML files (Governor's format or OpenSLO v1) -> frozen ``SLO`` objects.

A file holds one SLO mapping, ``slos: [ ... ]``, or OpenSLO documents (``apiVersion:
openslo/v1``); a directory means every ``*.yaml``/``*.yml`` in it. Validation reports
every problem at once, each with file, field path and reason, and refuses SLOs whose
alerts could never fire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controlplane.config import problems_from
from controlplane.errors import Problem
from controlplane.slo.errors import SpecError
from controlplane.slo.windows import (
    MINUTE,
    Tier,
    Window,
    default_tiers,
    format_duration,
    parse_duration,
)
from controlplane.store.rollups import LatencyMetric, Selector

SliKind = Literal["latency", "availability", "throughput", "gauge"]
GaugeOp = Literal["<", "<=", ">", ">=", "==", "!="]
# Columns a gauge SLI may compare, per table (identifiers are never taken from input).
GAUGE_FIELDS: dict[str, frozenset[str]] = {
    "gpu_samples": frozenset({
        "healthy", "utilization", "temperature_c", "memory_temperature_c", "power_w",
        "ecc_uncorrected", "remapped_rows_pending", "memory_used_bytes", "sm_clock_mhz",
    }),
    "replica_samples": frozenset({
        "up", "kv_cache_usage", "waiting", "running", "preemptions_per_s",
        "prefix_cache_hit_rate", "generation_tokens_per_s", "prompt_tokens_per_s",
    }),
}  # fmt: skip
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


@dataclass(frozen=True)
class SLI:
    kind: SliKind
    metric: LatencyMetric | None = None  # latency
    threshold_s: float = 0.0  # latency: good = at or under
    floor_tokens_per_s: float = 0.0  # throughput: good = at or above
    source: str = ""  # gauge: gpu_samples | replica_samples
    field: str = ""
    op: GaugeOp = "<"
    value: float = 0.0


@dataclass(frozen=True)
class Budgeting:
    method: Literal["occurrences", "timeslices"] = "occurrences"
    slice_s: int = MINUTE
    slice_target: float = 1.0  # a slice is good when its good/total >= this


@dataclass(frozen=True)
class Alerting:
    tiers: tuple[Tier, ...]
    min_events: int = 10
    no_data_after_s: int = 600  # 0: no no-data alert
    no_data_severity: str = "ticket"
    budget_exhausted_severity: str = "ticket"  # "": no budget-exhausted alert
    offset_s: int = 60
    runbook_url: str = ""


@dataclass(frozen=True)
class SLO:
    name: str
    selector: Selector
    sli: SLI
    objective: float  # fraction, 0 < objective < 1
    window: Window
    budgeting: Budgeting
    alerting: Alerting
    description: str = ""
    source: str = ""

    @property
    def pool(self) -> str:
        return self.selector.pool


# -- input models (structure and types; meaning is checked in _build) ----------------------
class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SelectorIn(_In):
    pool: str = ""
    model: str = ""
    tenant: str = ""


class SliIn(_In):
    kind: SliKind
    metric: LatencyMetric | None = None
    threshold_s: float | None = Field(default=None, gt=0)
    floor_tokens_per_s: float | None = Field(default=None, gt=0)
    source: Literal["gpu_samples", "replica_samples"] | None = None
    field: str | None = None
    op: GaugeOp | None = None
    value: float | None = None


class CalendarIn(_In):
    calendar: Literal["month", "week"]
    timezone: str = "UTC"


class BudgetingIn(_In):
    method: Literal["occurrences", "timeslices"]
    slice: str = "1m"
    slice_target: float = Field(default=1.0, gt=0, le=1)


class TierIn(_In):
    name: str = Field(pattern=_NAME)
    severity: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    long: str
    short: str
    factor: float = Field(gt=0)
    for_: str = Field(default="0s", alias="for")


class NoDataIn(_In):
    after: str = "10m"
    severity: str = "ticket"


class BudgetExhaustedIn(_In):
    severity: str = "ticket"


class AlertingIn(_In):
    tiers: Literal["default"] | list[TierIn] = "default"
    min_events: int = Field(default=10, ge=0)
    no_data: NoDataIn | bool = True
    budget_exhausted: BudgetExhaustedIn | bool = True
    offset: str = "1m"
    runbook_url: str = ""


class SloIn(_In):
    name: str = Field(pattern=_NAME)
    description: str = ""
    selector: SelectorIn = SelectorIn()
    sli: SliIn
    objective: float = Field(gt=0, le=100)
    window: str | CalendarIn = "28d"
    budgeting: Literal["occurrences", "timeslices"] | BudgetingIn = "occurrences"
    alerting: AlertingIn = AlertingIn()


# -- meaning -------------------------------------------------------------------------------
class _Problems:
    def __init__(self, source: str, prefix: str) -> None:
        self.source, self.prefix, self.items = source, prefix, list[Problem]()

    def add(self, path: str, message: str) -> None:
        full = f"{self.prefix}.{path}" if self.prefix and path else (self.prefix or path)
        self.items.append(Problem(self.source, full, message))

    def duration(self, path: str, text: str, *, minutes: bool = True) -> int | None:
        try:
            secs = parse_duration(text)
        except ValueError as exc:
            self.add(path, str(exc))
            return None
        if minutes and secs % MINUTE:
            self.add(path, f"must be a whole number of minutes (rollup resolution), got {text!r}")
            return None
        return secs


def _sli(s: SliIn, sel: SelectorIn, p: _Problems) -> SLI:
    needs: dict[str, tuple[str, ...]] = {
        "latency": ("metric", "threshold_s"),
        "availability": (),
        "throughput": ("floor_tokens_per_s",),
        "gauge": ("source", "field", "op", "value"),
    }
    allowed = set(needs[s.kind])
    for name in ("metric", "threshold_s", "floor_tokens_per_s", "source", "field", "op", "value"):
        given = getattr(s, name) is not None
        if name in allowed and not given:
            p.add(f"sli.{name}", f"required for a {s.kind} SLI")
        elif given and name not in allowed:
            p.add(f"sli.{name}", f"not used by a {s.kind} SLI")
    if s.kind == "gauge" and s.source and s.field is not None:
        if s.field not in GAUGE_FIELDS[s.source]:
            known = ", ".join(sorted(GAUGE_FIELDS[s.source]))
            p.add("sli.field", f"unknown {s.source} field {s.field!r}; expected one of {known}")
        if sel.tenant:
            p.add("selector.tenant", "gauge SLIs read GPU/replica samples, which have no tenant")
        if sel.model and s.source == "gpu_samples":
            p.add("selector.model", "gpu_samples has no model column; select by pool")
    return SLI(
        kind=s.kind, metric=s.metric, threshold_s=s.threshold_s or 0.0,
        floor_tokens_per_s=s.floor_tokens_per_s or 0.0, source=s.source or "",
        field=s.field or "", op=s.op or "<", value=s.value if s.value is not None else 0.0,
    )  # fmt: skip


def _window(w: str | CalendarIn, p: _Problems) -> Window:
    if isinstance(w, CalendarIn):
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(w.timezone)
        except (KeyError, ValueError):
            p.add("window.timezone", f"unknown time zone {w.timezone!r} (IANA name expected)")
            return Window("calendar", calendar=w.calendar)
        return Window("calendar", calendar=w.calendar, tz=w.timezone)
    if w in ("month", "week"):
        return Window("calendar", calendar=w)  # type: ignore[arg-type]
    secs = p.duration("window", w)
    if secs is not None and secs < 3600:
        p.add("window", f"an SLO window must be at least 1h, got {w!r}")
    return Window("rolling", duration_s=secs or 28 * 86400)


def _alerting(a: AlertingIn, objective: float, window: Window, p: _Problems) -> Alerting:
    window_s = window.nominal_s()
    indexed: list[tuple[str, Tier]] = []  # (field path, tier)
    if a.tiers == "default":
        indexed = [(f"alerting.tiers (default {t.name})", t) for t in default_tiers(window_s)]
    else:
        for i, ti in enumerate(a.tiers):
            at = f"alerting.tiers[{i}]"
            long_s = p.duration(f"{at}.long", ti.long)
            short_s = p.duration(f"{at}.short", ti.short)
            for_s = p.duration(f"{at}.for", ti.for_, minutes=False)
            if long_s is None or short_s is None or for_s is None:
                continue
            if short_s > long_s:
                p.add(f"{at}.short", f"short window {ti.short} is longer than the long "
                      f"window {ti.long}")  # fmt: skip
            tier = Tier(ti.name, ti.severity, long_s, short_s, ti.factor, float(for_s))
            indexed.append((at, tier))
        names = [ti.name for ti in a.tiers]
        for n in sorted({n for n in names if names.count(n) > 1}):
            p.add("alerting.tiers", f"tier name {n!r} is used twice")
    max_burn = 1.0 / (1.0 - objective)
    for path, t in indexed:
        if t.factor >= max_burn:
            p.add(f"{path}.factor", (
                f"can never fire: burn rate {t.factor:g} needs more than 100% errors at "
                f"objective {objective:.6g} (the highest possible burn rate is {max_burn:.4g}); "
                "lower the factor or use custom tiers"))  # fmt: skip
        if t.long_s > window_s:
            p.add(f"{path}.long", f"long window {format_duration(t.long_s)} is longer than the "
                  f"SLO window ({window.label}), so it can never be satisfied")  # fmt: skip
    tiers = tuple(t for _, t in indexed)
    offset = p.duration("alerting.offset", a.offset, minutes=False)
    if offset is not None and offset > 3600:
        p.add("alerting.offset", f"evaluation offset must be at most 1h, got {a.offset!r}")
    no_data_after, no_data_sev = 0, "ticket"
    if isinstance(a.no_data, NoDataIn):
        no_data_after = p.duration("alerting.no_data.after", a.no_data.after) or 0
        no_data_sev = a.no_data.severity
    elif a.no_data:
        no_data_after = 600
    exhausted = ""
    if isinstance(a.budget_exhausted, BudgetExhaustedIn):
        exhausted = a.budget_exhausted.severity
    elif a.budget_exhausted:
        exhausted = "ticket"
    return Alerting(
        tiers=tiers, min_events=a.min_events, no_data_after_s=no_data_after,
        no_data_severity=no_data_sev, budget_exhausted_severity=exhausted,
        offset_s=offset or 0, runbook_url=a.runbook_url,
    )  # fmt: skip


def _budgeting(b: str | BudgetingIn, sli: SLI, p: _Problems) -> Budgeting:
    if isinstance(b, str):
        b = BudgetingIn.model_validate({"method": b})
    if sli.kind == "gauge" and b.method != "timeslices":
        p.add("budgeting", "a gauge SLI counts good minutes: budgeting must be timeslices")
    slice_s = p.duration("budgeting.slice", b.slice) or MINUTE
    return Budgeting(b.method, slice_s, b.slice_target)


def build(spec: SloIn, source: str, prefix: str = "") -> tuple[SLO | None, list[Problem]]:
    p = _Problems(source, prefix)
    objective = spec.objective / 100.0 if spec.objective > 1 else spec.objective
    if objective >= 1.0:
        p.add("objective", "an objective of 100% leaves no error budget; use less than 100")
        objective = 0.999
    sli = _sli(spec.sli, spec.selector, p)
    window = _window(spec.window, p)
    budgeting = _budgeting(spec.budgeting, sli, p)
    alerting = _alerting(spec.alerting, objective, window, p)
    if p.items:
        return None, p.items
    sel = Selector(spec.selector.pool, spec.selector.model, spec.selector.tenant)
    slo = SLO(spec.name, sel, sli, objective, window, budgeting, alerting,
              spec.description, source)  # fmt: skip
    return slo, []


def parse_slos(data: Any, source: str = "<slos>") -> list[SLO]:
    """SLOs from one parsed YAML document stream (a list of documents)."""
    from controlplane.slo.openslo import from_openslo, is_openslo

    docs = [d for d in (data if isinstance(data, list) else [data]) if d is not None]
    problems: list[Problem] = []
    specs: list[tuple[Any, str]] = []
    if docs and all(is_openslo(d) for d in docs):
        converted, errs = from_openslo(docs, source)
        problems += errs
        specs += converted
    else:
        for i, doc in enumerate(docs):
            pre = f"[{i}]" if len(docs) > 1 else ""
            if not isinstance(doc, dict):
                problems.append(Problem(source, pre, "expected a mapping (an SLO or slos: [...])"))
            elif "slos" in doc:
                items = doc["slos"]
                if not isinstance(items, list) or set(doc) != {"slos"}:
                    problems.append(Problem(source, f"{pre}slos", "expected only a list of SLOs"))
                    continue
                specs += [(s, f"{pre}slos[{j}]") for j, s in enumerate(items)]
            else:
                specs.append((doc, pre))
    out: list[SLO] = []
    for raw, prefix in specs:
        try:
            model = SloIn.model_validate(raw)
        except ValidationError as exc:
            for prob in problems_from(exc, source):
                path = f"{prefix}.{prob.path}" if prefix and prob.path else prefix or prob.path
                problems.append(Problem(source, path, prob.message))
            continue
        slo, errs = build(model, source, prefix)
        problems += errs
        if slo is not None:
            out.append(slo)
    if problems:
        raise SpecError(problems)
    return out


def _read(path: Path) -> list[SLO]:
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([Problem(source, "", f"cannot read file: {exc.strerror}")]) from None
    try:
        data = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([Problem(source, where, f"invalid YAML: {exc}")]) from None
    return parse_slos(data, source)


def load_slos(path: str | Path) -> list[SLO]:
    """Every SLO in a file or a directory; all problems of all files in one ``SpecError``."""
    root = Path(path)
    if root.is_dir():
        files = sorted(f for f in root.iterdir() if re.search(r"\.ya?ml$", f.name))
    elif root.exists():
        files = [root]
    else:
        raise SpecError([Problem(str(root), "", "no such file or directory")])
    problems: list[Problem] = []
    slos: list[SLO] = []
    for f in files:
        try:
            slos += _read(f)
        except SpecError as exc:
            problems += exc.problems
    seen: dict[str, str] = {}
    for s in slos:
        if s.name in seen:
            problems.append(Problem(s.source, "name", f"SLO name {s.name!r} is already used "
                                    f"in {seen[s.name]}"))  # fmt: skip
        seen.setdefault(s.name, s.source)
    if problems:
        raise SpecError(problems)
    return slos
