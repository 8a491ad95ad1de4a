"""The local fleet actuator over real replica processes and a real router."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from controlplane.fleet.base import AdmissionLimit, Fleet, FleetError, ReplicaState, UnknownReplica
from controlplane.fleet.local import LocalFleet, LocalPool
from controlplane.sim.router import Router, create_app
from controlplane.sim.supervisor import Supervisor, ThreadServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
S = ReplicaState


@pytest.fixture
def setup(tmp_path):
    router = ThreadServer(create_app(Router(model=MODEL, pool="chat-8b"))).start()
    sup = Supervisor(log_dir=tmp_path)
    fleet = LocalFleet([LocalPool("chat-8b", router.url, cold_start_s=0.5)], sup)
    try:
        yield fleet, router.url, sup
    finally:
        fleet.close()
        sup.stop_all()
        router.stop()


def wait_until(what: str, ok: Callable[[], bool], timeout_s: float = 90.0) -> None:
    """Processes boot in seconds on a busy machine: observe until ``ok`` or fail."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.2)


def states(fleet: LocalFleet) -> dict[str, ReplicaState]:
    return {r.id: r.state for r in fleet.replicas("chat-8b")}


def routed(url: str) -> dict[str, str]:
    return {b["name"]: b["state"] for b in httpx.get(url + "/admin/replicas").json()["replicas"]}


@pytest.mark.slow
def test_replica_lifecycle_start_serve_drain_undrain_scale_stop(setup):
    fleet, router_url, sup = setup
    as_protocol: Fleet = fleet  # the local fleet is a Fleet
    started = [as_protocol.start("chat-8b"), as_protocol.start("chat-8b")]
    assert [r.state for r in started] == [S.STARTING, S.STARTING]
    assert all(r.url.startswith("http://127.0.0.1:") for r in started)
    a, b = (r.id for r in started)
    assert routed(router_url) == {}  # not routed while cold

    wait_until("both serving", lambda: states(fleet) == {a: S.SERVING, b: S.SERVING})
    assert routed(router_url) == {a: "serving", b: "serving"}
    reply = httpx.post(router_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert reply.status_code == 200

    fleet.drain(b)
    wait_until("b drained", lambda: states(fleet)[b] is S.DRAINED)
    assert sup.get(b).alive()  # kept warm
    assert routed(router_url)[b] == "drained"
    fleet.undrain(b)
    assert states(fleet)[b] is S.SERVING and routed(router_url)[b] == "serving"

    assert fleet.scale_to("chat-8b", 1) == [b]  # the newest goes
    wait_until("b stopped", lambda: b not in states(fleet))
    assert routed(router_url) == {a: "serving"}
    assert sup.get(b) is None

    child = sup.get(a)
    fleet.stop(a)
    assert child.process.poll() is not None
    assert fleet.replicas("chat-8b") == [] and routed(router_url) == {}


@pytest.mark.slow
def test_a_crashed_replica_is_failed_and_taken_out_of_routing(setup):
    fleet, router_url, _ = setup
    r = fleet.start("chat-8b")
    wait_until("serving", lambda: states(fleet) == {r.id: S.SERVING})
    assert httpx.post(r.url + "/admin/fault", json={"kind": "crash"}).status_code == 200
    wait_until("failed", lambda: states(fleet)[r.id] is S.FAILED)
    assert routed(router_url) == {}
    # a failed replica is not active: scaling to 1 starts a new one beside it
    (new,) = fleet.scale_to("chat-8b", 1)
    assert new != r.id and states(fleet)[new] in (S.STARTING, S.SERVING)
    assert states(fleet)[r.id] is S.FAILED


def test_admission_limits_reach_the_router(setup):
    fleet, router_url, _ = setup
    limits = [
        AdmissionLimit(tenant="batch", priority=1, requests_per_s=2.0),
        AdmissionLimit(tokens_per_s=50000.0, burst_s=2.0),
    ]
    fleet.set_admission_limits("chat-8b", limits)
    assert fleet.admission_limits("chat-8b") == limits
    got = httpx.get(router_url + "/admin/limits").json()["limits"]
    assert got == [
        {"tenant": "batch", "priority": "1", "requests_per_s": 2.0, "tokens_per_s": None,
         "burst_s": 1.0},
        {"tenant": "*", "priority": "*", "requests_per_s": None, "tokens_per_s": 50000.0,
         "burst_s": 2.0},
    ]  # fmt: skip
    fleet.set_admission_limits("chat-8b", [])
    assert httpx.get(router_url + "/admin/limits").json()["limits"] == []


def test_unknown_pools_and_replicas_are_named(setup):
    fleet, _, _ = setup
    with pytest.raises(FleetError, match="unknown pool 'gpt'; local pools: chat-8b"):
        fleet.start("gpt")
    with pytest.raises(UnknownReplica, match="unknown replica 'chat-8b-9'"):
        fleet.drain("chat-8b-9")


def test_router_outage_is_a_fleet_error(tmp_path):
    fleet = LocalFleet([LocalPool("p", "http://127.0.0.1:9")], Supervisor(log_dir=tmp_path))
    with pytest.raises(FleetError, match="router of pool p at http://127.0.0.1:9"):
        fleet.set_admission_limits("p", [AdmissionLimit(requests_per_s=1.0)])
    assert fleet.admission_limits("p") == []  # nothing recorded that did not apply
