"""The router over real HTTP in front of real simulated replicas."""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import ExitStack

import httpx
import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from prometheus_client.parser import text_string_to_metric_families

from collector.records import ListSink
from collector.spans import LLMSpanProcessor
from controlplane.clock import ManualClock
from controlplane.sim import wire
from controlplane.sim.replica import Replica, ReplicaConfig
from controlplane.sim.replica_app import create_app as replica_app
from controlplane.sim.router import REPLICA_HEADER, Router, create_app
from controlplane.sim.supervisor import Supervisor, ThreadServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class Fleet:
    """Replicas and a router, each served from a thread on loopback."""

    def __init__(self, stack: ExitStack, n: int, router: Router) -> None:
        self.replicas: dict[str, Replica] = {}
        self.router = router
        for i in range(n):
            r = Replica(ReplicaConfig(name=f"r{i}", cold_start_s=0.0))
            server = stack.enter_context(ThreadServer(replica_app(r)))
            router.balancer.add(r.config.name, server.url)
            self.replicas[r.config.name] = r
        self.url = stack.enter_context(ThreadServer(create_app(router))).url

    def hang(self, *names: str) -> None:
        for name in names:
            self.replicas[name].faults.set(_fault("hang"))

    def unhang(self, *names: str) -> None:
        for name in names:
            self.replicas[name].faults.clear("hang")

    def outstanding(self) -> dict[str, int]:
        backends = httpx.get(self.url + "/admin/replicas").json()["replicas"]
        return {b["name"]: b["outstanding"] for b in backends}

    def wait_outstanding(self, expected: dict[str, int], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.outstanding() != expected:
            assert time.monotonic() < deadline, self.outstanding()
            threading.Event().wait(0.02)

    def state(self, name: str) -> str:
        backends = httpx.get(self.url + "/admin/replicas").json()["replicas"]
        return next(b["state"] for b in backends if b["name"] == name)


class OnEnd(SpanProcessor):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_end(self, span) -> None:
        self.event.set()


def _fault(kind: str):
    from controlplane.sim.replica_faults import parse_fault

    return parse_fault({"kind": kind})


@pytest.fixture
def stack():
    with ExitStack() as s:
        yield s


def body(max_tokens: int = 4, stream: bool = False, **extra) -> dict:
    out = {"model": MODEL, "prompt": wire.make_prompt(16), "max_tokens": max_tokens,
           "ignore_eos": True, "stream": stream, **extra}  # fmt: skip
    return out


def open_stream(stack: ExitStack, client: httpx.Client, url: str, b: dict, **kw) -> httpx.Response:
    resp = stack.enter_context(client.stream("POST", url + "/v1/completions", json=b, **kw))
    assert resp.status_code == 200
    return resp


def metric(url: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_requests_go_to_the_replica_with_fewest_in_flight(stack):
    fleet = Fleet(stack, 2, Router(model=MODEL))
    fleet.hang("r0", "r1")  # requests stay in flight: outstanding counts are stable
    client = stack.enter_context(httpx.Client(timeout=30))
    streams = [open_stream(stack, client, fleet.url, body(stream=True)) for _ in range(4)]
    assert fleet.outstanding() == {"r0": 2, "r1": 2}
    assert sorted(s.headers[REPLICA_HEADER] for s in streams) == ["r0", "r0", "r1", "r1"]
    fleet.unhang("r0")  # r0's requests finish; the next two go to r0, now the idlest
    for s in streams:
        if s.headers[REPLICA_HEADER] == "r0":
            assert list(s.iter_lines())[-2] == "data: [DONE]"
    # The router releases a replica just after the last byte went out: wait for it.
    fleet.wait_outstanding({"r0": 0, "r1": 2})
    more = [open_stream(stack, client, fleet.url, body(stream=True)) for _ in range(2)]
    assert {s.headers[REPLICA_HEADER] for s in more} == {"r0"}
    fleet.unhang("r1")


def test_drain_lets_in_flight_requests_finish_and_sends_new_ones_elsewhere(stack):
    fleet = Fleet(stack, 2, Router(model=MODEL))
    fleet.hang("r0", "r1")
    client = stack.enter_context(httpx.Client(timeout=30))
    held = open_stream(stack, client, fleet.url, body(stream=True))
    busy = held.headers[REPLICA_HEADER]
    other = "r1" if busy == "r0" else "r0"
    fleet.unhang(other)
    drained = httpx.post(f"{fleet.url}/admin/replicas/{busy}/drain").json()
    assert drained["state"] == "draining" and drained["outstanding"] == 1
    for _ in range(3):
        resp = client.post(fleet.url + "/v1/completions", json=body())
        assert resp.status_code == 200
        assert resp.headers[REPLICA_HEADER] == other
    still = httpx.post(f"{fleet.url}/admin/replicas/{busy}/drain", params={"wait_s": 0.2})
    assert still.json()["state"] == "draining"  # the wait ran out: it is still busy
    fleet.unhang(busy)
    lines = [line for line in held.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert all("error" not in json.loads(line[6:]) for line in lines[:-1])
    waited = httpx.post(f"{fleet.url}/admin/replicas/{busy}/drain", params={"wait_s": 30})
    assert waited.json()["state"] == "drained"  # answers as soon as it is idle
    assert httpx.post(f"{fleet.url}/admin/replicas/{busy}/undrain").json()["state"] == "serving"


def test_admission_limit_answers_429_with_retry_after(stack):
    clock = ManualClock()
    fleet = Fleet(stack, 1, Router(model=MODEL, clock=clock))
    limits = {"limits": [{"tenant": "t1", "requests_per_s": 1}]}
    assert httpx.put(fleet.url + "/admin/limits", json=limits).status_code == 200
    client = stack.enter_context(httpx.Client(timeout=30))
    t1 = {wire.TENANT_HEADER: "t1"}
    assert client.post(fleet.url + "/v1/completions", json=body(), headers=t1).status_code == 200
    refused = client.post(fleet.url + "/v1/completions", json=body(), headers=t1)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "tenant=t1" in refused.json()["error"]["message"]
    other = client.post(
        fleet.url + "/v1/completions", json=body(), headers={wire.TENANT_HEADER: "t2"}
    )
    assert other.status_code == 200
    clock.advance(1.0)
    assert client.post(fleet.url + "/v1/completions", json=body(), headers=t1).status_code == 200
    rejected = metric(fleet.url, "governor_router_admission_rejected_total", tenant="t1")
    assert rejected == 1


def test_invalid_limits_are_refused_and_the_old_ones_kept(stack):
    fleet = Fleet(stack, 1, Router(model=MODEL))
    good = {"limits": [{"tenant": "t1", "requests_per_s": 5}]}
    httpx.put(fleet.url + "/admin/limits", json=good)
    bad = httpx.put(fleet.url + "/admin/limits", json={"limits": [{"tokens_per_s": "many"}]})
    assert bad.status_code == 400
    assert "[0].tokens_per_s: expected a number > 0" in bad.json()["error"]["message"]
    assert httpx.get(fleet.url + "/admin/limits").json()["limits"][0]["tenant"] == "t1"


def test_no_serving_replica_and_bad_requests_get_errors(stack):
    fleet = Fleet(stack, 1, Router(model=MODEL))
    bad = httpx.post(fleet.url + "/v1/completions", json={"prompt": 5})
    assert bad.status_code == 400
    assert "prompt must be" in bad.json()["error"]["message"]
    httpx.post(fleet.url + "/admin/replicas/r0/drain")
    none = httpx.post(fleet.url + "/v1/completions", json=body())
    assert none.status_code == 503
    assert metric(fleet.url, "governor_router_no_replica_total") == 1
    assert httpx.post(fleet.url + "/admin/replicas/zz/drain").status_code == 404


def test_router_spans_carry_gateway_ttft_into_request_records(stack):
    sink = ListSink()
    provider = TracerProvider()
    provider.add_span_processor(LLMSpanProcessor(sink))
    ended = threading.Event()  # the router ends its span after the client got [DONE]
    provider.add_span_processor(OnEnd(ended))
    router = Router(model=MODEL, pool="chat-8b", tracer=provider.get_tracer("router"))
    fleet = Fleet(stack, 1, router)
    headers = {wire.TENANT_HEADER: "acme", wire.PRIORITY_HEADER: "2"}
    b = body(max_tokens=5, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", fleet.url + "/v1/completions", json=b, headers=headers) as resp:
        assert list(resp.iter_lines())[-2] == "data: [DONE]"
    assert ended.wait(10)
    assert provider.force_flush()
    provider.shutdown()
    [rec] = sink.records
    assert (rec.pool, rec.replica, rec.tenant, rec.priority) == ("chat-8b", "r0", "acme", "2")
    assert rec.status == "ok" and rec.finish_reason == "length"
    assert (rec.input_tokens, rec.output_tokens) == (16, 5)
    assert 0 < rec.ttft_us < rec.e2e_us
    assert rec.model == MODEL


@pytest.mark.slow
def test_a_replica_killed_mid_stream_ends_its_streams_with_an_error_the_rest_go_on(stack, tmp_path):
    sup = Supervisor(log_dir=tmp_path)
    stack.callback(sup.stop_all)
    router = Router(model=MODEL)
    children = {}
    for name in ("r0", "r1"):
        children[name] = sup.spawn(
            name, ["sim", "replica", "--name", name, "--cold-start-s", "0"], listen=True
        )
    client = stack.enter_context(httpx.Client(timeout=60))
    for name, child in children.items():
        # The socket listens already: this waits in the backlog until the child serves.
        assert client.get(child.url + "/health").status_code == 200
        router.balancer.add(name, child.url)
    url = stack.enter_context(ThreadServer(create_app(router))).url
    b = body(max_tokens=400, stream=True, stream_options={"include_usage": True})
    streams = [open_stream(stack, client, url, b) for _ in range(4)]
    lines = [s.iter_lines() for s in streams]
    for it in lines:  # every stream is producing tokens
        assert next(line for line in it if line.startswith("data: "))
    victim = streams[0].headers[REPLICA_HEADER]
    children[victim].process.send_signal(signal.SIGKILL)
    children[victim].process.wait(10)
    ends = {}
    for s, it in zip(streams, lines, strict=True):
        events = [line[6:] for line in it if line.startswith("data: ")]
        ends.setdefault(s.headers[REPLICA_HEADER], []).append(events)
    survivor = "r1" if victim == "r0" else "r0"
    for events in ends[victim]:
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["type"] == "upstream_error" and victim in err["message"]
    for events in ends[survivor]:
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 400
    assert metric(url, "governor_router_stream_errors_total", replica=victim) == len(ends[victim])
    assert metric(url, "governor_router_stream_errors_total", replica=survivor) == 0
    # New requests still succeed: a connection refused is retried on the survivor.
    for _ in range(3):
        resp = client.post(url + "/v1/completions", json=body())
        assert resp.status_code == 200
        assert resp.headers[REPLICA_HEADER] == survivor
