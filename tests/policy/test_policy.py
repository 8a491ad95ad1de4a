"""Policy registry, the static policy and the policy loop over a real (virtual) fleet."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.clock import ManualClock
from controlplane.fleet.base import AdmissionLimit, ReplicaState
from controlplane.policy import (
    Action,
    Decision,
    PolicyError,
    PolicyLoop,
    PoolSignals,
    UnknownPolicy,
    create_policy,
    direction_changes,
    policy_names,
    register_policy,
)
from controlplane.policy.static import StaticPolicy
from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM
from controlplane.sim.virtual_fleet import VirtualFleet

EPOCH = 1_700_000_000.0


def signals_for(n_active: int) -> PoolSignals:
    from controlplane.fleet.base import Replica

    reps = tuple(
        Replica(f"r{i}", "p", ReplicaState.SERVING, started_at=0.0) for i in range(n_active)
    )
    return PoolSignals(pool="p", now=EPOCH, window_s=60, replicas=reps)


@pytest.mark.parametrize(
    ("have", "want", "target"),
    [
        pytest.param(3, 3, None, id="holding the count decides nothing"),
        pytest.param(1, 3, 3, id="too few replicas scales up"),
        pytest.param(5, 3, 3, id="too many replicas scales down"),
    ],
)
def test_static_policy_holds_its_count(have, want, target):
    decision = StaticPolicy(replicas=want).decide(signals_for(have))
    assert decision.target_replicas == target


def test_registry_builds_policies_by_name_and_reports_bad_names_and_options():
    assert "static" in policy_names()
    p = create_policy("static", replicas=4, interval_s=15)
    assert (p.name, p.interval_s) == ("static", 15.0)
    with pytest.raises(UnknownPolicy, match="known: .*static"):
        create_policy("magic")
    with pytest.raises(PolicyError, match="bad options"):
        create_policy("static", replica=4)
    with pytest.raises(PolicyError, match="replicas must be >= 0"):
        create_policy("static", replicas=-1)


def test_registering_a_second_factory_under_a_taken_name_fails():
    with pytest.raises(PolicyError, match="registered twice"):
        register_policy("static")(lambda **kw: StaticPolicy(1))


@dataclass
class Scripted:
    """A test policy that returns pre-set targets in order."""

    targets: list[int | None]
    name: str = "scripted"
    interval_s: float = 10.0
    window_s: float = 60.0
    limits: tuple[AdmissionLimit, ...] | None = None

    def decide(self, signals: PoolSignals) -> Decision:
        target = self.targets.pop(0) if self.targets else None
        return Decision(target_replicas=target, admission_limits=self.limits, reason="script")


class FleetSignals:
    def __init__(self, fleet: VirtualFleet) -> None:
        self.fleet = fleet

    def signals(self, pool: str, now: float, window_s: float) -> PoolSignals:
        return PoolSignals(
            pool=pool, now=now, window_s=window_s, replicas=tuple(self.fleet.replicas(pool))
        )


def make_loop(policy, *, dry_run=False, lo=1, hi=4):
    clock = ManualClock(EPOCH)
    fleet = VirtualFleet(LLAMA31_8B_H100_VLLM, clock, epoch=EPOCH, cold_start_s=30, pools=["p"])
    fleet.start_warm("p")
    seen: list[Action] = []
    loop = PolicyLoop(
        policy,
        fleet,
        FleetSignals(fleet),
        clock,
        pool="p",
        min_replicas=lo,
        max_replicas=hi,
        dry_run=dry_run,
        on_action=seen.append,
    )
    return loop, fleet, clock, seen


def test_loop_applies_decisions_to_the_fleet_within_bounds():
    loop, fleet, clock, seen = make_loop(Scripted([3, 9, None, 0]))
    loop.tick()
    states = [r.state for r in fleet.replicas("p")]
    assert states.count(ReplicaState.STARTING) == 2
    clock.advance(30)
    loop.tick()  # 9 is clamped to max 4
    assert len([r for r in fleet.replicas("p") if r.active]) == 4
    loop.tick()  # None: nothing
    loop.tick()  # 0 is clamped to min 1
    assert len([r for r in fleet.replicas("p") if r.active]) == 1
    assert [(a.kind, a.from_replicas, a.to_replicas) for a in seen] == [
        ("scale_up", 1, 3),
        ("scale_up", 3, 4),
        ("scale_down", 4, 1),
    ]
    assert seen[0].ts == EPOCH and seen[1].ts == EPOCH + 30
    # the audit fields: who decided, for which pool, why, and that it worked
    assert {(a.pool, a.policy, a.reason, a.dry_run, a.error) for a in seen} == {
        ("p", "scripted", "script", False, "")
    }


def test_dry_run_records_actions_but_leaves_the_fleet_alone():
    limits = (AdmissionLimit(tenant="batch", requests_per_s=2.0),)
    loop, fleet, _, seen = make_loop(Scripted([3], limits=limits), dry_run=True)
    loop.tick()
    assert len(fleet.replicas("p")) == 1
    assert fleet.admission_limits("p") == []  # limits not applied either
    assert [(a.kind, a.from_replicas, a.to_replicas, a.dry_run) for a in seen] == [
        ("scale_up", 1, 3, True),
        ("limits", 1, 1, True),
    ]


class RefusingFleet(VirtualFleet):
    """A fleet whose scaling fails, as a cluster out of GPUs or an API error does."""

    def scale_to(self, pool: str, n: int) -> list[str]:
        from controlplane.fleet.base import FleetError

        raise FleetError(f"no capacity for {n} replicas of {pool}")


def test_a_failed_scale_is_recorded_with_its_error_and_not_counted_as_a_flap():
    clock = ManualClock(EPOCH)
    fleet = RefusingFleet(LLAMA31_8B_H100_VLLM, clock, epoch=EPOCH, cold_start_s=30,
                          pools=["p"])  # fmt: skip
    fleet.start_warm("p")
    seen: list[Action] = []
    loop = PolicyLoop(Scripted([3]), fleet, FleetSignals(fleet), clock, pool="p",
                      min_replicas=1, max_replicas=4, on_action=seen.append)  # fmt: skip
    loop.tick()  # the loop goes on: the failure is in the action, not raised
    ((kind, error),) = [(a.kind, a.error) for a in seen]
    assert kind == "scale_up" and error == "no capacity for 3 replicas of p"
    assert len(fleet.replicas("p")) == 1
    failed = Action(0, "p", "x", "scale", 3, 1, "", error="refused")
    ok = [Action(0, "p", "x", "scale", 1, 3, ""), Action(0, "p", "x", "scale", 3, 4, "")]
    assert direction_changes([ok[0], failed, ok[1]]) == 0  # the refused reversal is no flap


def test_admission_limits_decisions_reach_the_fleet():
    limits = (AdmissionLimit(tenant="batch", requests_per_s=2.0),)
    loop, fleet, _, seen = make_loop(Scripted([], limits=limits))
    loop.tick()
    assert fleet.admission_limits("p") == list(limits)
    assert seen[0].kind == "limits"


def test_direction_changes_count_reversals_only():
    def act(a: int, b: int) -> Action:
        return Action(0, "p", "x", "scale", a, b, "")

    assert direction_changes([act(1, 2), act(2, 3), act(3, 2), act(2, 4), act(4, 4)]) == 2
    assert direction_changes([]) == 0


def test_invalid_bounds_are_refused():
    with pytest.raises(PolicyError, match="min_replicas 5 > max_replicas 2"):
        make_loop(Scripted([]), lo=5, hi=2)


def test_admission_limit_values_are_validated():
    from controlplane.fleet.base import FleetError

    with pytest.raises(FleetError, match="requests_per_s must be >= 0"):
        AdmissionLimit(requests_per_s=-1)
