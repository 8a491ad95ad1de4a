"""The simulated replica over real HTTP: OpenAI API, vLLM metrics, GPU metrics, spans."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from controlplane.clock import ManualClock
from controlplane.sim import wire
from controlplane.sim.gpu_model import GpuModel
from controlplane.sim.replica import Replica, ReplicaConfig
from controlplane.sim.replica_app import create_app
from controlplane.sim.replica_metrics import (
    REQUEST_LATENCY_BUCKETS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    DcgmGpu,
)
from controlplane.sim.supervisor import ThreadServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def spans():
    return InMemorySpanExporter()


@pytest.fixture
def crashed():
    return threading.Event()


@pytest.fixture
def replica(spans, crashed):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    r = Replica(
        ReplicaConfig(name="r0", pool="chat-8b", cold_start_s=0.0),
        tracer=provider.get_tracer("vllm.llm_engine"),
        gpu=DcgmGpu(GpuModel()),
        on_crash=crashed.set,
    )
    server = ThreadServer(create_app(r)).start()
    try:
        yield r, server.url
    finally:
        server.stop()
        provider.shutdown()


def sse_events(resp: httpx.Response) -> list[str]:
    return [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]


def test_completion_returns_the_asked_tokens_and_usage(replica):
    _, url = replica
    body = {"model": MODEL, "prompt": wire.make_prompt(50), "max_tokens": 12, "ignore_eos": True}
    resp = httpx.post(url + "/v1/completions", json=body, timeout=30)
    assert resp.status_code == 200
    out = resp.json()
    assert out["object"] == "text_completion"
    assert out["model"] == MODEL
    assert out["usage"] == {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}
    [choice] = out["choices"]
    assert choice["finish_reason"] == "length"
    assert wire.count_tokens(choice["text"]) == 12


def test_streamed_chat_sends_one_chunk_per_step_then_usage_then_done(replica):
    _, url = replica
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "say five words"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = [c for c in chunks if c["choices"]]
    assert len(content) == 5
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 4 + ["length"]
    usage = chunks[-1]
    assert usage["choices"] == []
    # 3 words + the chat template's tokens for one message
    prompt = 3 + wire.CHAT_TOKENS_PER_MESSAGE
    assert usage["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 5,
        "total_tokens": prompt + 5,
    }


def test_stream_without_include_usage_has_no_usage_chunk(replica):
    _, url = replica
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as resp:
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]).count(" ") == 3


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        pytest.param("/v1/completions", {"model": MODEL}, 400, "prompt must be",
                     id="a completion without a prompt is refused naming prompt"),
        pytest.param("/v1/chat/completions", {"model": MODEL, "messages": []}, 400,
                     "messages must be a non-empty list", id="empty messages are refused"),
        pytest.param("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400,
                     "max_tokens must be an integer >= 1", id="max_tokens below one is refused"),
        pytest.param("/v1/completions", {"model": "other", "prompt": "x"}, 404,
                     "The model `other` does not exist.", id="an unknown model is not found"),
        pytest.param("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400,
                     "n must be 1", id="several choices are refused"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors_naming_the_field(replica, path, body, status, message):
    _, url = replica
    resp = httpx.post(url + path, json=body, timeout=10)
    assert resp.status_code == status
    err = resp.json()["error"]
    assert message in err["message"]
    assert err["code"] == status


def test_models_lists_the_served_model(replica):
    _, url = replica
    data = httpx.get(url + "/v1/models").json()["data"]
    assert [m["id"] for m in data] == [MODEL]


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_have_vllm_names_types_labels_and_buckets(replica):
    _, url = replica
    body = {"model": MODEL, "prompt": wire.make_prompt(20), "max_tokens": 4, "ignore_eos": True}
    for _ in range(2):
        assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 200
    fams = families(httpx.get(url + "/metrics").text)
    expected = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:gpu_cache_usage_perc": "gauge",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:num_preemptions": "counter",
        "vllm:request_success": "counter",
        "vllm:prefix_cache_queries": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:time_per_output_token_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram",
        "vllm:request_prefill_time_seconds": "histogram",
        "vllm:request_decode_time_seconds": "histogram",
        "vllm:request_prompt_tokens": "histogram",
        "vllm:request_generation_tokens": "histogram",
    }
    assert {name: fams[name].type for name in expected} == expected
    for fam in (fams["vllm:num_requests_running"], fams["vllm:prompt_tokens"]):
        assert {s.labels["model_name"] for s in fam.samples} == {MODEL}
        assert {s.labels["engine"] for s in fam.samples} == {"0"}
    value = {s.name: s.value for s in fams["vllm:prompt_tokens"].samples}
    assert value["vllm:prompt_tokens_total"] == 40
    gen = {s.name: s.value for s in fams["vllm:generation_tokens"].samples}
    assert gen["vllm:generation_tokens_total"] == 8
    success = {
        s.labels["finished_reason"]: s.value
        for s in fams["vllm:request_success"].samples
        if s.name.endswith("_total")
    }
    assert success["length"] == 2

    def buckets(name: str) -> list[float]:
        return [
            float(s.labels["le"]) for s in fams[name].samples
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
        ]  # fmt: skip

    assert buckets("vllm:time_to_first_token_seconds") == list(TTFT_BUCKETS)
    assert buckets("vllm:inter_token_latency_seconds") == list(TPOT_BUCKETS)
    assert buckets("vllm:e2e_request_latency_seconds") == list(REQUEST_LATENCY_BUCKETS)
    assert buckets("vllm:request_prompt_tokens")[:6] == [1, 2, 5, 10, 20, 50]
    ttft_count = [s for s in fams["vllm:time_to_first_token_seconds"].samples
                  if s.name.endswith("_count")]  # fmt: skip
    assert ttft_count[0].value == 2


def test_gpu_metrics_are_dcgm_exporter_shaped_and_show_faults(replica):
    _, url = replica
    assert httpx.post(url + "/admin/fault", json={"kind": "xid", "xid": 48}).status_code == 200
    text = httpx.get(url + "/dcgm/metrics").text
    fams = families(text)
    assert fams["DCGM_FI_DEV_GPU_UTIL"].type == "gauge"
    assert fams["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].type == "counter"
    [xid] = fams["DCGM_FI_DEV_XID_ERRORS"].samples
    assert xid.value == 48
    assert set(xid.labels) == {
        "gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION",
    }  # fmt: skip
    assert xid.labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert xid.labels["UUID"].startswith("GPU-")
    [used] = fams["DCGM_FI_DEV_FB_USED"].samples
    [free] = fams["DCGM_FI_DEV_FB_FREE"].samples
    assert used.value + free.value == pytest.approx(81559, abs=1)


def test_finished_requests_become_vllm_llm_request_spans(replica, spans):
    _, url = replica
    body = {"model": MODEL, "prompt": wire.make_prompt(30), "max_tokens": 6, "ignore_eos": True}
    headers = {wire.TENANT_HEADER: "acme", wire.PRIORITY_HEADER: "1"}
    resp = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=30)
    [span] = spans.get_finished_spans()
    assert span.name == "llm_request"
    assert span.kind is SpanKind.SERVER
    a = span.attributes
    assert a["gen_ai.request.id"] == resp.json()["id"]
    assert a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.usage.prompt_tokens"] == 30
    assert a["gen_ai.usage.completion_tokens"] == 6
    assert a["gen_ai.request.max_tokens"] == 6
    assert a["governor.tenant"] == "acme" and a["governor.priority"] == "1"
    for key in ("time_to_first_token", "e2e", "time_in_queue", "time_in_model_prefill",
                "time_in_model_decode", "time_in_model_inference"):  # fmt: skip
        assert a[f"gen_ai.latency.{key}"] >= 0, key
    assert a["gen_ai.latency.time_to_first_token"] < a["gen_ai.latency.e2e"]
    # start = arrival, end = finish, in wall-clock nanoseconds
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(
        a["gen_ai.latency.e2e"], abs=1e-3
    )


def test_cold_start_answers_503_until_ready():
    clock = ManualClock()
    r = Replica(ReplicaConfig(cold_start_s=30.0), clock=clock)
    with ThreadServer(create_app(r)) as server:
        assert httpx.get(server.url + "/health").status_code == 503
        body = {"model": MODEL, "prompt": "x"}
        resp = httpx.post(server.url + "/v1/completions", json=body)
        assert resp.status_code == 503
        assert "cold start" in resp.json()["error"]["message"]
        clock.advance(29.9)
        assert httpx.get(server.url + "/health").status_code == 503
        clock.advance(0.2)
        assert httpx.get(server.url + "/health").status_code == 200


def test_xid_fails_streams_in_flight_and_refuses_new_requests(replica):
    r, url = replica
    body = {"model": MODEL, "prompt": "x", "max_tokens": 100000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as resp:
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"]
        set_fault = httpx.post(url + "/admin/fault", json={"kind": "xid"})
        assert set_fault.json() == {"faults": [{"kind": "xid", "xid": 79}]}
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    last = json.loads(rest[-2])
    assert last["error"]["message"] == "GPU error: Xid 79"
    again = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert again.status_code == 500
    assert "Xid 79" in again.json()["error"]["message"]
    assert httpx.delete(url + "/admin/fault").json() == {"faults": []}
    assert (
        httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 200
    )


def test_slow_fault_multiplies_step_time(replica):
    r, url = replica
    httpx.post(url + "/admin/fault", json={"kind": "slow", "multiplier": 4})
    httpx.post(url + "/admin/fault", json={"kind": "thermal", "params": {"multiplier": 1.5}})
    assert r.faults.slowdown == pytest.approx(6.0)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "ignore_eos": True}
    assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 200
    assert r.engine.slowdown == pytest.approx(6.0)  # the engine steps under the fault
    httpx.delete(url + "/admin/fault", params={"kind": "slow"})
    assert [f["kind"] for f in httpx.get(url + "/admin/fault").json()["faults"]] == ["thermal"]


def test_hang_accepts_requests_that_never_progress(replica):
    r, url = replica
    httpx.post(url + "/admin/fault", json={"kind": "hang"})
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=2.0) as resp:
        assert resp.status_code == 200  # accepted: the headers came
        with pytest.raises(httpx.ReadTimeout):  # ... and then nothing
            list(resp.iter_lines())
    assert r.engine.stats().generation_tokens_total == 0
    assert httpx.get(url + "/health").status_code == 200  # a wedged engine still says ok


def test_an_engine_failure_fails_requests_and_health_instead_of_hanging(replica, spans):
    r, url = replica

    idle_step = r.engine.step

    def broken(now_s, **kw):
        if r.engine.has_work():  # fails on the first real iteration
            raise RuntimeError("model bug")
        return idle_step(now_s, **kw)

    r.engine.step = broken
    resp = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=30)
    assert resp.status_code == 500
    assert resp.json()["error"]["message"] == "engine failed"
    assert httpx.get(url + "/health").status_code == 503
    [span] = spans.get_finished_spans()
    assert span.attributes["error.type"] == "engine_error"
    again = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert again.status_code == 503


def test_crash_fault_calls_the_crash_hook(replica, crashed):
    _, url = replica
    assert httpx.post(url + "/admin/fault", json={"kind": "crash"}).status_code == 200
    assert crashed.wait(5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param({"kind": "melt"}, "kind must be one of xid, thermal, hang, crash, slow",
                     id="an unknown kind names the known ones"),
        pytest.param({"kind": "slow", "multiplier": 0.5}, "multiplier must be a number >= 1",
                     id="a speed-up is not a fault"),
        pytest.param({"kind": "xid", "xid": "a"}, "xid must be a positive integer",
                     id="an xid code must be a number"),
        pytest.param({"kind": "hang", "seconds": 3}, "unknown fault parameters: seconds",
                     id="unknown parameters are named"),
    ],
)  # fmt: skip
def test_bad_fault_requests_are_refused(replica, body, message):
    r, url = replica
    resp = httpx.post(url + "/admin/fault", json=body)
    assert resp.status_code == 400
    assert message in resp.json()["error"]["message"]
    assert r.faults.active() == []
