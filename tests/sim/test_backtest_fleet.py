"""The virtual fleet behind backtests, and the shared scale_to planning."""

from __future__ import annotations

import pytest

from controlplane.clock import ManualClock
from controlplane.fleet.base import (
    FleetError,
    Replica,
    ReplicaState,
    UnknownReplica,
    plan_scale,
)
from controlplane.sim.calibration import LLAMA31_8B_H100_VLLM
from controlplane.sim.engine import SimRequest
from controlplane.sim.virtual_fleet import VirtualFleet

S, ST, D, DD = (
    ReplicaState.SERVING,
    ReplicaState.STARTING,
    ReplicaState.DRAINING,
    ReplicaState.DRAINED,
)


def reps(*states: ReplicaState) -> list[Replica]:
    return [Replica(f"r{i}", "p", st, started_at=float(i)) for i, st in enumerate(states)]


@pytest.mark.parametrize(
    ("states", "n", "expected"),
    [
        pytest.param((S, S), 2, ([], 0, []), id="at target nothing happens"),
        pytest.param((S,), 3, ([], 2, []), id="growing starts new replicas"),
        pytest.param((S, D, DD), 3, (["r2", "r1"], 0, []), id="growing reuses warm ones first"),
        pytest.param((S, S, ST), 2, ([], 0, ["r2"]), id="shrinking drops a starting one first"),
        # the starting one is the oldest here: starting beats newest
        pytest.param((ST, S, S), 2, ([], 0, ["r0"]), id="a starting replica goes before newer"),
        pytest.param((S, S, S), 1, ([], 0, ["r2", "r1"]), id="shrinking drains the newest"),
    ],
)
def test_plan_scale(states, n, expected):
    assert plan_scale(reps(*states), n) == expected


def test_plan_scale_refuses_negative_counts():
    with pytest.raises(FleetError, match="cannot scale to -1"):
        plan_scale([], -1)


def make() -> tuple[VirtualFleet, ManualClock]:
    clock = ManualClock(1000.0)
    return VirtualFleet(
        LLAMA31_8B_H100_VLLM, clock, epoch=1000.0, cold_start_s=60, pools=["p"]
    ), clock


def test_started_replicas_serve_after_the_cold_start():
    fleet, clock = make()
    r = fleet.start("p")
    assert r.state is ReplicaState.STARTING and r.ready_at == 60.0
    clock.advance(59)
    assert fleet.replicas("p")[0].state is ReplicaState.STARTING
    clock.advance(1)
    assert fleet.replicas("p")[0].state is ReplicaState.SERVING


def test_undrain_before_the_cold_start_ends_is_still_starting():
    fleet, clock = make()
    r = fleet.start("p")  # ready at t=60
    fleet.drain(r.id)
    clock.advance(30)
    fleet.undrain(r.id)
    assert fleet.get(r.id).state is ReplicaState.STARTING  # not serving before it is ready
    clock.advance(30)
    assert fleet.replicas("p")[0].state is ReplicaState.SERVING


def test_drain_waits_for_in_flight_requests_then_is_drained_and_undrain_restores():
    fleet, clock = make()
    r = fleet.start_warm("p")
    r.engine.submit(SimRequest("q", 0.0, 100, 3))
    fleet.drain(r.id)
    assert fleet.get(r.id).state is ReplicaState.DRAINING
    now = 0.0
    while r.engine.has_work():
        now += r.engine.step(now).duration_s
    fleet.settle(r.id)
    assert fleet.get(r.id).state is ReplicaState.DRAINED
    fleet.undrain(r.id)
    assert fleet.get(r.id).state is ReplicaState.SERVING


def test_scale_down_stops_idle_replicas_and_counts_gpu_time_until_then():
    fleet, clock = make()
    a, b = fleet.start_warm("p"), fleet.start_warm("p")
    clock.advance(100)
    fleet.scale_to("p", 1)
    assert fleet.get(b.id).state is ReplicaState.STOPPED
    assert [x.id for x in fleet.replicas("p")] == [a.id]
    assert fleet.gpu_seconds(until_t=400) == pytest.approx(400 + 100)


def test_stop_cuts_in_flight_requests():
    fleet, _ = make()
    r = fleet.start_warm("p")
    r.engine.submit(SimRequest("q1", 0.0, 100, 30))
    fleet.stop(r.id)
    assert fleet.cut_requests == ["q1"]
    assert fleet.replicas("p") == []


def test_errors_name_the_replica_or_pool():
    fleet, _ = make()
    with pytest.raises(UnknownReplica, match="unknown replica 'x'"):
        fleet.drain("x")
    with pytest.raises(FleetError, match="unknown pool 'q'"):
        fleet.start("q")
    r = fleet.start_warm("p")
    with pytest.raises(FleetError, match="not draining"):
        fleet.undrain(r.id)
