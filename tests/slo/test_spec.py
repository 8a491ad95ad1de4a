"""SLO specs: valid files load, every invalid field is named with its path, OpenSLO maps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controlplane.slo.errors import SpecError
from controlplane.slo.spec import load_slos, parse_slos
from controlplane.slo.windows import DAY, HOUR, MINUTE

REPO = Path(__file__).resolve().parents[2]


def _base(**over: object) -> dict[str, object]:
    slo: dict[str, object] = {
        "name": "chat-ttft",
        "selector": {"pool": "chat-8b"},
        "sli": {"kind": "latency", "metric": "ttft", "threshold_s": 0.5},
        "objective": 99.5,
        "window": "28d",
    }
    slo.update(over)
    return slo


def _problems(data: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as exc:
        parse_slos(data, "slos.yaml")
    assert all(p.source == "slos.yaml" for p in exc.value.problems)
    return [(p.path, p.message) for p in exc.value.problems]


def test_a_complete_spec_becomes_a_frozen_slo_with_rescaled_default_tiers() -> None:
    (slo,) = parse_slos(_base(objective=0.995), "f.yaml")
    assert slo.objective == pytest.approx(0.995)
    assert slo.window.kind == "rolling" and slo.window.duration_s == 28 * DAY
    assert slo.sli.metric == "ttft" and slo.sli.threshold_s == 0.5
    assert [(t.name, t.long_s, t.short_s, t.factor) for t in slo.alerting.tiers] == [
        ("page-fast", 56 * MINUTE, 5 * MINUTE, 14.4),
        ("page-slow", 336 * MINUTE, 28 * MINUTE, 6.0),
        ("ticket", 4032 * MINUTE, 336 * MINUTE, 1.0),
    ]
    assert slo.alerting.offset_s == 60 and slo.alerting.min_events == 10
    with pytest.raises(AttributeError):
        slo.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        (
            _base(sli={"kind": "latency", "threshold_s": 0.5}),
            "sli.metric",
            "required for a latency",
        ),
        (
            _base(sli={"kind": "availability", "threshold_s": 0.5}),
            "sli.threshold_s",
            "not used by a availability",
        ),
        (
            _base(sli={"kind": "latency", "metric": "ttfb", "threshold_s": 0.5}),
            "sli.metric",
            "'ttft'",
        ),
        (_base(sli={"kind": "throughput"}), "sli.floor_tokens_per_s", "required"),
        (
            _base(
                sli={
                    "kind": "gauge",
                    "source": "gpu_samples",
                    "field": "fan_speed",
                    "op": "<",
                    "value": 1,
                },
                budgeting="timeslices",
            ),
            "sli.field",
            "unknown gpu_samples field",
        ),
        (
            _base(
                sli={
                    "kind": "gauge",
                    "source": "gpu_samples",
                    "field": "healthy",
                    "op": "==",
                    "value": 1,
                }
            ),
            "budgeting",
            "must be timeslices",
        ),
        (
            _base(
                selector={"pool": "p", "tenant": "acme"},
                sli={
                    "kind": "gauge",
                    "source": "replica_samples",
                    "field": "kv_cache_usage",
                    "op": "<",
                    "value": 0.9,
                },
                budgeting="timeslices",
            ),
            "selector.tenant",
            "no tenant",
        ),
        (_base(objective=100), "objective", "less than 100"),
        (_base(objective=0), "objective", "greater than 0"),
        (_base(window="28x"), "window", "expected a duration"),
        (_base(window="90s"), "window", "whole number of minutes"),
        (_base(window="30m"), "window", "at least 1h"),
        (
            _base(window={"calendar": "month", "timezone": "Mars/Olympus"}),
            "window.timezone",
            "unknown time zone",
        ),
        (
            _base(budgeting={"method": "timeslices", "slice": "1m", "slice_target": 1.5}),
            "budgeting.BudgetingIn.slice_target",
            "less than or equal to 1",
        ),
        (
            _base(budgeting={"method": "timeslices", "slice": "30s"}),
            "budgeting.slice",
            "whole number of minutes",
        ),
        (_base(alerting={"offset": "2h"}), "alerting.offset", "at most 1h"),
        (_base(alerting={"min_events": -1}), "alerting.min_events", "greater than or equal to 0"),
        (_base(colour="blue"), "colour", "unknown field"),
        (_base(name="bad name"), "name", "should match pattern"),
    ],
    ids=[
        "a latency SLI without a metric",
        "an availability SLI given a threshold",
        "an unknown latency metric",
        "a throughput SLI without a floor",
        "a gauge over an unknown column",
        "a gauge budgeted by occurrences",
        "a gauge selecting a tenant",
        "an objective of 100 percent",
        "an objective of 0",
        "a window with an unknown unit",
        "a window of seconds",
        "a window under an hour",
        "an unknown time zone",
        "a slice target above 1",
        "a slice shorter than a minute",
        "an offset over an hour",
        "a negative minimum event count",
        "an unknown field",
        "a name with a space",
    ],
)
def test_each_invalid_field_is_reported_with_its_path(spec, path: str, reason: str) -> None:
    problems = _problems({"slos": [spec]})
    assert any(p == f"slos[0].{path}" and reason in m for p, m in problems), problems


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        (_base(objective=90), "alerting.tiers (default page-fast).factor", "can never fire"),
        (
            _base(
                objective=95,
                alerting={
                    "tiers": [
                        {"name": "p", "severity": "page", "long": "1h", "short": "5m", "factor": 20}
                    ]
                },
            ),
            "alerting.tiers[0].factor",
            "highest possible burn rate is 20",
        ),
        (
            _base(
                alerting={
                    "tiers": [
                        {"name": "p", "severity": "page", "long": "5m", "short": "1h", "factor": 2}
                    ]
                }
            ),
            "alerting.tiers[0].short",
            "longer than the long window",
        ),
        (
            _base(
                window="7d",
                alerting={
                    "tiers": [
                        {"name": "p", "severity": "page", "long": "10d", "short": "1h", "factor": 1}
                    ]
                },
            ),
            "alerting.tiers[0].long",
            "longer than the SLO window",
        ),
        (
            _base(
                alerting={
                    "tiers": [
                        {"name": "p", "severity": "page", "long": "1h", "short": "5m", "factor": 2},
                        {
                            "name": "p",
                            "severity": "ticket",
                            "long": "6h",
                            "short": "30m",
                            "factor": 1,
                        },
                    ]
                }
            ),
            "alerting.tiers",
            "used twice",
        ),
    ],
    ids=[
        "default page tier at a 90 percent objective needs over 100 percent errors",
        "a custom factor at the highest possible burn rate",
        "a short window longer than the long one",
        "a long window longer than the SLO window",
        "two tiers with one name",
    ],
)
def test_alerts_that_could_never_fire_are_refused(spec, path: str, reason: str) -> None:
    problems = _problems({"slos": [spec]})
    assert any(p == f"slos[0].{path}" and reason in m for p, m in problems), problems


def test_every_problem_of_every_slo_is_reported_at_once() -> None:
    problems = _problems({"slos": [_base(objective=100, window="3x"), _base(name="b", sli={})]})
    paths = {p for p, _ in problems}
    assert {"slos[0].objective", "slos[0].window", "slos[1].sli.kind"} <= paths


def test_a_directory_loads_every_file_and_rejects_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(_base()))
    (tmp_path / "b.yml").write_text(yaml.safe_dump({"slos": [_base(name="other")]}))
    (tmp_path / "notes.txt").write_text("not yaml")
    assert [s.name for s in load_slos(tmp_path)] == ["chat-ttft", "other"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_base()))
    with pytest.raises(SpecError) as exc:
        load_slos(tmp_path)
    (p,) = exc.value.problems
    assert p.source.endswith("c.yaml") and "already used" in p.message


def test_invalid_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("slos:\n  - name: [unclosed\n")
    with pytest.raises(SpecError) as exc:
        load_slos(f)
    (p,) = exc.value.problems
    assert p.source == str(f) and p.path.startswith("line ") and "invalid YAML" in p.message


def test_calendar_windows_and_timeslices_parse() -> None:
    (slo,) = parse_slos(_base(
        window={"calendar": "month", "timezone": "Europe/Paris"},
        budgeting={"method": "timeslices", "slice": "5m", "slice_target": 0.9},
    ))  # fmt: skip
    assert (slo.window.kind, slo.window.calendar, slo.window.tz) == (
        "calendar",
        "month",
        "Europe/Paris",
    )
    assert (slo.budgeting.method, slo.budgeting.slice_s, slo.budgeting.slice_target) == (
        "timeslices",
        300,
        0.9,
    )
    # A 30-day month keeps the base tiers unchanged.
    assert [(t.long_s, t.factor) for t in slo.alerting.tiers] == [
        (HOUR, 14.4),
        (6 * HOUR, 6.0),
        (3 * DAY, 1.0),
    ]


def test_the_example_slos_are_valid() -> None:
    slos = load_slos(REPO / "examples" / "slos")
    names = {s.name for s in slos}
    assert {"chat-8b-availability", "chat-8b-ttft", "code-70b-availability"} <= names
    assert {s.pool for s in slos} == {"chat-8b", "code-70b"}


def test_slo_check_prints_every_problem_and_fails(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"slos": [_base(objective=90, window="1x")]}))
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", "slo", "check", str(f)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert f"error: {f}: slos[0].window: expected a duration such as 5m" in lines[0]
    assert any(
        "slos[0].alerting.tiers (default page-fast).factor: can never fire" in ln for ln in lines
    )
    ok = subprocess.run([sys.executable, "-m", "controlplane.cli", "slo", "check",
                         str(REPO / "examples" / "slos")], capture_output=True, text=True,
                        timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "chat-8b-ttft: latency 99% over 28d (occurrences); tiers: page-fast 56m/5m >14.4x" in (
        ok.stdout
    )


def test_slo_check_notes_a_latency_threshold_between_bucket_bounds(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    spec = _base(sli={"kind": "latency", "metric": "ttft", "threshold_s": 0.333})
    f.write_text(yaml.safe_dump({"slos": [spec, _base(name="exact")]}))
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", "slo", "check", str(f)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stdout.splitlines() if "note:" in ln]
    assert notes == ["  note: 0.333 s is not a rollup bucket bound (two significant digits): "
                     "requests just under it count as bad"]  # fmt: skip
