"""Import of OpenSLO v1 documents (kinds SLO and SLI) into Governor's spec format.

What maps: ``thresholdMetric`` and ``ratioMetric`` whose ``metricSource.type`` is
``Governor``; rolling and calendar (1M, 1w) time windows; Occurrences and Timeslices
budgeting; one objective. What does not (other metric sources, RatioTimeslices, several
objectives, alert policies) is rejected with the document path of the offending field.
Alerting uses Governor's default tiers.

Governor metric source ``spec``: ``metric`` (``ttft``/``tpot``/``e2e``/``queue`` in
seconds, ``output_tokens_per_s``, ``requests``, or ``<table>.<field>`` for gauges) plus
an optional ``pool``, ``model``, ``tenant``; in a ratio, ``status: ok|error`` on
``requests`` or ``le``/``ge`` on a latency or throughput metric.
"""

from __future__ import annotations

from typing import Any

from controlplane.errors import Problem

_API = "openslo/v1"
_IGNORED = {"Service", "DataSource"}  # describe things Governor does not need
_LATENCY = {"ttft", "tpot", "e2e", "queue"}
_OPS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "eq": "==", "ne": "!="}


def is_openslo(doc: Any) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("openslo/")


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source, self.problems = source, list[Problem]()

    def err(self, path: str, msg: str) -> None:
        self.problems.append(Problem(self.source, path, msg))


def _source_spec(m: Any, path: str, c: _Ctx) -> dict[str, Any] | None:
    if not isinstance(m, dict) or not isinstance(m.get("metricSource"), dict):
        c.err(path, "expected metricSource with type Governor")
        return None
    src = m["metricSource"]
    if src.get("type") != "Governor":
        c.err(f"{path}.metricSource.type", f"metric source {src.get('type')!r} is not "
              "supported: only type Governor maps to Governor's rollups")  # fmt: skip
        return None
    spec = src.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("metric"), str):
        c.err(f"{path}.metricSource.spec.metric", "required: which Governor metric")
        return None
    return spec


def _selector(spec: dict[str, Any]) -> dict[str, str]:
    return {k: str(spec[k]) for k in ("pool", "model", "tenant") if spec.get(k)}


def _threshold(sli: dict[str, Any], obj: dict[str, Any], p: str, op_path: str,
               c: _Ctx) -> tuple[dict[str, Any], dict[str, str]] | None:  # fmt: skip
    spec = _source_spec(sli.get("thresholdMetric"), f"{p}.thresholdMetric", c)
    if spec is None:
        return None
    metric, op, value = spec["metric"], obj.get("op"), obj.get("value")
    if op not in _OPS or not isinstance(value, int | float):
        c.err(op_path, "a thresholdMetric objective needs op (lt, lte, gt, gte) and a number value")
        return None
    if metric in _LATENCY:
        if op != "lte":
            c.err(f"{op_path}.op", f"latency SLIs count requests at or under the threshold: "
                  f"use op lte, got {op!r}")  # fmt: skip
            return None
        return {"kind": "latency", "metric": metric, "threshold_s": value}, _selector(spec)
    if metric == "output_tokens_per_s":
        if op != "gte":
            c.err(f"{op_path}.op", f"throughput SLIs count requests at or above the floor: "
                  f"use op gte, got {op!r}")  # fmt: skip
            return None
        return {"kind": "throughput", "floor_tokens_per_s": value}, _selector(spec)
    table, _, field = metric.partition(".")
    if table in ("gpu_samples", "replica_samples") and field:
        sli_out = {"kind": "gauge", "source": table, "field": field, "op": _OPS[op], "value": value}
        return sli_out, _selector(spec)
    c.err(f"{p}.thresholdMetric.metricSource.spec.metric", f"unknown Governor metric {metric!r}")
    return None


def _ratio(sli: dict[str, Any], p: str, c: _Ctx) -> tuple[dict[str, Any], dict[str, str]] | None:
    r = sli["ratioMetric"]
    part = "good" if "good" in r else "bad" if "bad" in r else None
    if part is None:
        c.err(f"{p}.ratioMetric", "needs good or bad, and total")
        return None
    num = _source_spec(r[part], f"{p}.ratioMetric.{part}", c)
    total = _source_spec(r.get("total"), f"{p}.ratioMetric.total", c)
    if num is None or total is None:
        return None
    sel = _selector(total)
    if _selector(num) != sel:
        c.err(f"{p}.ratioMetric.{part}.metricSource.spec", "selects other series (pool, model, "
              "tenant) than total; both must select the same requests")  # fmt: skip
        return None
    metric = num["metric"]
    if total.get("metric") != "requests" and total.get("metric") != metric:
        c.err(f"{p}.ratioMetric.total.metricSource.spec.metric", "total must count requests")
        return None
    if metric == "requests":
        want = "ok" if part == "good" else "error"
        if num.get("status") != want:
            c.err(
                f"{p}.ratioMetric.{part}.metricSource.spec.status",
                f"{part} requests need status: {want}",
            )
            return None
        return {"kind": "availability"}, sel
    if part == "good" and metric in _LATENCY and isinstance(num.get("le"), int | float):
        return {"kind": "latency", "metric": metric, "threshold_s": num["le"]}, sel
    floor = num.get("ge")
    if part == "good" and metric == "output_tokens_per_s" and isinstance(floor, int | float):
        return {"kind": "throughput", "floor_tokens_per_s": num["ge"]}, sel
    c.err(f"{p}.ratioMetric.{part}.metricSource.spec", "expected requests with status, a "
          "latency metric with le, or output_tokens_per_s with ge (good only)")  # fmt: skip
    return None


def _window(spec: dict[str, Any], p: str, c: _Ctx) -> Any:
    tw = spec.get("timeWindow")
    if not isinstance(tw, list) or len(tw) != 1 or not isinstance(tw[0], dict):
        c.err(f"{p}.timeWindow", "expected exactly one time window")
        return None
    w, dur = tw[0], str(tw[0].get("duration", ""))
    if w.get("isRolling", False):
        if dur.endswith("M"):
            c.err(f"{p}.timeWindow[0].duration", "a month is a calendar window, not rolling")
            return None
        return f"{int(dur[:-1]) * 7}d" if dur.endswith("w") and dur[:-1].isdigit() else dur
    cal = {"1M": "month", "1w": "week"}.get(dur)
    if cal is None:
        c.err(f"{p}.timeWindow[0].duration", f"calendar windows of 1M or 1w are supported, "
              f"got {dur!r}")  # fmt: skip
        return None
    tz = (w.get("calendar") or {}).get("timeZone", "UTC")
    return {"calendar": cal, "timezone": tz}


def _slo(doc: dict[str, Any], p: str, slis: dict[str, Any], c: _Ctx) -> dict[str, Any] | None:
    spec, name = doc.get("spec") or {}, (doc.get("metadata") or {}).get("name")
    if not name:
        c.err(f"{p}.metadata.name", "required")
        return None
    if "indicatorRef" in spec:
        sli_doc = slis.get(spec["indicatorRef"])
        if sli_doc is None:
            c.err(f"{p}.spec.indicatorRef", f"no SLI named {spec['indicatorRef']!r} in this file")
            return None
        sli, sli_path = sli_doc[0].get("spec") or {}, f"{sli_doc[1]}.spec"
    elif isinstance(spec.get("indicator"), dict):
        sli, sli_path = spec["indicator"].get("spec") or {}, f"{p}.spec.indicator.spec"
    else:
        c.err(f"{p}.spec", "needs indicator or indicatorRef")
        return None
    objs = spec.get("objectives")
    if not isinstance(objs, list) or len(objs) != 1 or not isinstance(objs[0], dict):
        c.err(f"{p}.spec.objectives", "exactly one objective is supported (one SLO per target)")
        return None
    obj, op_path = objs[0], f"{p}.spec.objectives[0]"
    target = obj.get("target", obj.get("targetPercent"))
    if not isinstance(target, int | float):
        c.err(op_path, "needs target (0..1) or targetPercent (0..100)")
        return None
    if "thresholdMetric" in sli:
        mapped = _threshold(sli, obj, sli_path, op_path, c)
    elif "ratioMetric" in sli:
        mapped = _ratio(sli, sli_path, c)
    else:
        c.err(sli_path, "needs thresholdMetric or ratioMetric")
        return None
    window = _window(spec, f"{p}.spec", c)
    method = spec.get("budgetingMethod", "Occurrences")
    budgeting: Any
    if method == "Occurrences":
        budgeting = "occurrences"
    elif method == "Timeslices":
        budgeting = {"method": "timeslices", "slice": str(obj.get("timeSliceWindow", "1m")),
                     "slice_target": obj.get("timeSliceTarget", 1.0)}  # fmt: skip
    else:
        c.err(f"{p}.spec.budgetingMethod", f"{method!r} is not supported; use Occurrences or "
              "Timeslices")  # fmt: skip
        return None
    if mapped is None or window is None:
        return None
    sli_out, sel = mapped
    percent = "targetPercent" in obj and "target" not in obj
    return {
        "name": name, "description": spec.get("description", ""), "selector": sel,
        "sli": sli_out, "objective": target if percent else target * 100 if target < 1 else target,
        "window": window, "budgeting": budgeting,
    }  # fmt: skip


def from_openslo(docs: list[Any], source: str) -> tuple[list[tuple[Any, str]], list[Problem]]:
    """Governor spec mappings (with a path prefix each) and the problems found."""
    c = _Ctx(source)
    slis: dict[str, tuple[dict[str, Any], str]] = {}
    for i, d in enumerate(docs):
        if d.get("apiVersion") != _API:
            c.err(f"[{i}].apiVersion", f"expected {_API}, got {d.get('apiVersion')!r}")
        elif d.get("kind") == "SLI":
            slis[str((d.get("metadata") or {}).get("name"))] = (d, f"[{i}]")
    out: list[tuple[Any, str]] = []
    for i, d in enumerate(docs):
        kind, p = d.get("kind"), f"[{i}]"
        if d.get("apiVersion") != _API or kind == "SLI" or kind in _IGNORED:
            continue
        if kind != "SLO":
            c.err(f"{p}.kind", f"kind {kind!r} is not imported (SLO and SLI are); Governor "
                  "alerting is configured in the SLO's alerting section")  # fmt: skip
            continue
        mapped = _slo(d, p, slis, c)
        if mapped is not None:
            out.append((mapped, p))
    return out, c.problems
