"""OpenSLO v1 import: what maps becomes the same SLO as Governor's format; the rest is
rejected with the document path of the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controlplane.slo.errors import SpecError
from controlplane.slo.spec import load_slos, parse_slos

REPO = Path(__file__).resolve().parents[2]


def _slo(spec: dict, name: str = "s") -> dict:
    base = {"timeWindow": [{"duration": "28d", "isRolling": True}],
            "budgetingMethod": "Occurrences", "objectives": [{"target": 0.99}]}  # fmt: skip
    base.update(spec)
    return {"apiVersion": "openslo/v1", "kind": "SLO", "metadata": {"name": name}, "spec": base}


def _src(spec: dict) -> dict:
    return {"metricSource": {"type": "Governor", "spec": spec}}


def _threshold(metric_spec: dict, op: str, value: float, **obj: object) -> dict:
    return {
        "indicator": {"metadata": {"name": "i"},
                      "spec": {"thresholdMetric": _src(metric_spec)}},
        "objectives": [{"op": op, "value": value, "target": 0.99, **obj}],
    }  # fmt: skip


def test_the_example_openslo_file_imports() -> None:
    slos = {s.name: s for s in load_slos(REPO / "examples/slos/code-70b-openslo.yaml")}
    avail, e2e = slos["code-70b-availability"], slos["code-70b-e2e"]
    assert avail.sli.kind == "availability" and avail.selector.pool == "code-70b"
    assert avail.objective == pytest.approx(0.995)
    assert (avail.window.kind, avail.window.calendar) == ("calendar", "month")
    assert (e2e.sli.kind, e2e.sli.metric, e2e.sli.threshold_s) == ("latency", "e2e", 20)
    assert e2e.window.duration_s == 28 * 86400


@pytest.mark.parametrize(
    ("spec", "kind", "check"),
    [
        (
            _threshold({"metric": "ttft", "pool": "p"}, "lte", 0.25),
            "latency",
            lambda s: s.sli.threshold_s == 0.25 and s.selector.pool == "p",
        ),
        (
            _threshold({"metric": "output_tokens_per_s", "model": "m"}, "gte", 30),
            "throughput",
            lambda s: s.sli.floor_tokens_per_s == 30 and s.selector.model == "m",
        ),
        (
            {
                **_threshold(
                    {"metric": "replica_samples.kv_cache_usage", "pool": "p"},
                    "lt",
                    0.9,
                    timeSliceTarget=0.95,
                    timeSliceWindow="1m",
                ),
                "budgetingMethod": "Timeslices",
            },
            "gauge",
            lambda s: (s.sli.op, s.sli.value, s.budgeting.slice_target) == ("<", 0.9, 0.95),
        ),
        (
            {
                "indicator": {
                    "metadata": {"name": "i"},
                    "spec": {
                        "ratioMetric": {
                            "counter": True,
                            "bad": _src({"metric": "requests", "status": "error", "tenant": "t"}),
                            "total": _src({"metric": "requests", "tenant": "t"}),
                        }
                    },
                }
            },
            "availability",
            lambda s: s.selector.tenant == "t",
        ),
        (
            {
                "indicator": {
                    "metadata": {"name": "i"},
                    "spec": {
                        "ratioMetric": {
                            "good": _src({"metric": "tpot", "le": 0.05}),
                            "total": _src({"metric": "requests"}),
                        }
                    },
                },
                "objectives": [{"targetPercent": 99.9}],
            },
            "latency",
            lambda s: s.sli.metric == "tpot" and s.objective == pytest.approx(0.999),
        ),
    ],
    ids=[
        "latency threshold",
        "throughput floor",
        "gauge with time slices",
        "availability from bad over total",
        "latency ratio with targetPercent",
    ],
)
def test_mappable_indicators_import(spec: dict, kind: str, check) -> None:
    (slo,) = parse_slos([_slo(spec)], "o.yaml")
    assert slo.sli.kind == kind and check(slo)


@pytest.mark.parametrize(
    ("docs", "path", "reason"),
    [
        (
            [
                _slo(
                    {
                        "indicator": {
                            "metadata": {"name": "i"},
                            "spec": {
                                "thresholdMetric": {
                                    "metricSource": {"type": "Prometheus", "spec": {"query": "up"}}
                                }
                            },
                        },
                        "objectives": [{"op": "lte", "value": 1, "target": 0.9}],
                    }
                )
            ],
            "[0].spec.indicator.spec.thresholdMetric.metricSource.type",
            "only type Governor",
        ),
        (
            [_slo(_threshold({"metric": "ttft"}, "lt", 0.5))],
            "[0].spec.objectives[0].op",
            "use op lte",
        ),
        (
            [
                _slo(
                    {
                        **_threshold({"metric": "ttft"}, "lte", 0.5),
                        "budgetingMethod": "RatioTimeslices",
                    }
                )
            ],
            "[0].spec.budgetingMethod",
            "not supported",
        ),
        (
            [
                _slo(
                    {
                        **_threshold({"metric": "ttft"}, "lte", 0.5),
                        "objectives": [
                            {"op": "lte", "value": 0.5, "target": 0.9},
                            {"op": "lte", "value": 1, "target": 0.99},
                        ],
                    }
                )
            ],
            "[0].spec.objectives",
            "exactly one objective",
        ),
        ([_slo({"indicatorRef": "missing"})], "[0].spec.indicatorRef", "no SLI named"),
        (
            [
                _slo(
                    {
                        **_threshold({"metric": "ttft"}, "lte", 0.5),
                        "timeWindow": [{"duration": "1Q", "isRolling": False}],
                    }
                )
            ],
            "[0].spec.timeWindow[0].duration",
            "1M or 1w",
        ),
        (
            [{"apiVersion": "openslo/v1", "kind": "AlertPolicy", "metadata": {"name": "a"}}],
            "[0].kind",
            "not imported",
        ),
        ([{"apiVersion": "openslo/v2alpha", "kind": "SLO"}], "[0].apiVersion", "openslo/v1"),
        (
            [
                _slo(
                    {
                        "indicator": {
                            "metadata": {"name": "i"},
                            "spec": {
                                "ratioMetric": {
                                    "good": _src(
                                        {"metric": "requests", "status": "ok", "pool": "a"}
                                    ),
                                    "total": _src({"metric": "requests", "pool": "b"}),
                                }
                            },
                        }
                    }
                )
            ],
            "[0].spec.indicator.spec.ratioMetric.good.metricSource.spec",
            "same requests",
        ),
    ],
    ids=[
        "a Prometheus metric source",
        "a latency objective with op lt",
        "RatioTimeslices budgeting",
        "two objectives",
        "an indicatorRef to nothing",
        "a quarter calendar window",
        "an AlertPolicy document",
        "another apiVersion",
        "good and total over different pools",
    ],
)
def test_what_does_not_map_is_rejected_with_its_document_path(docs, path, reason) -> None:
    with pytest.raises(SpecError) as exc:
        parse_slos(docs, "o.yaml")
    found = [(p.path, p.message) for p in exc.value.problems]
    assert any(p == path and reason in m for p, m in found), found


def test_openslo_and_governor_forms_give_the_same_slo(tmp_path: Path) -> None:
    gov = {"name": "s", "selector": {"pool": "p"}, "objective": 99,
           "sli": {"kind": "latency", "metric": "ttft", "threshold_s": 0.5}}  # fmt: skip
    (a,) = parse_slos(gov, "g.yaml")
    f = tmp_path / "o.yaml"
    f.write_text(
        yaml.safe_dump_all([_slo(_threshold({"metric": "ttft", "pool": "p"}, "lte", 0.5))])
    )
    (b,) = load_slos(f)
    assert (a.sli, a.selector, a.objective, a.window, a.budgeting, a.alerting) == (
        b.sli,
        b.selector,
        b.objective,
        b.window,
        b.budgeting,
        b.alerting,
    )
