"""The live load generator against httpx's MockTransport, on virtual time."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter

import httpx
import pytest

from controlplane.sim import wire
from controlplane.sim.errors import SimError
from controlplane.sim.loadgen import LoadGenerator, LoadStats, Progress, Source, looped
from controlplane.sim.traffic import Arrival, read_azure_csv
from tests.conftest import trace_file


class VirtualTime:
    """``sleep`` moves time forward at once, so a schedule runs in no wall time."""

    def __init__(self) -> None:
        self.t = 100.0

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


def ok_response(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    usage = wire.usage(wire.count_tokens(body["prompt"]), body["max_tokens"])
    if body.get("stream"):
        events = [wire.chunk(wire.COMPLETIONS, "c", "m", 0, " x", "length"),
                  wire.usage_chunk(wire.COMPLETIONS, "c", "m", 0, usage)]  # fmt: skip
        text = b"".join(wire.sse(e) for e in events) + wire.DONE
        return httpx.Response(200, content=text, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json={"usage": usage, "choices": []})


def arrivals(n: int, gap: float = 0.1) -> list[Arrival]:
    return [Arrival(i * gap, 10 + i, 5, "default", 0) for i in range(n)]


def run(gen: LoadGenerator) -> LoadStats:
    return asyncio.run(gen.run())


def test_open_loop_sends_every_request_on_time_without_waiting_for_answers():
    vt = VirtualTime()
    seen: list[float] = []

    async def scenario() -> LoadStats:
        gate = asyncio.Event()
        all_in = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            seen.append(vt.t)
            if len(seen) == 10:
                all_in.set()
            await gate.wait()  # no answer until every request was sent
            return ok_response(request)

        gen = LoadGenerator(
            "http://router", arrivals(10), transport=httpx.MockTransport(handler),
            monotonic=vt.monotonic, sleep=vt.sleep, stream_share=0.0,
        )  # fmt: skip
        task = asyncio.create_task(gen.run())
        await asyncio.wait_for(all_in.wait(), 10)
        assert gen.stats.sent == 10 and gen.stats.ok == 0 and gen.stats.in_flight == 10
        gate.set()
        return await task

    stats = asyncio.run(scenario())
    assert seen == pytest.approx([100.0 + i * 0.1 for i in range(10)])
    assert (stats.sent, stats.ok, stats.errors, stats.dropped, stats.in_flight) == (10, 10, 0, 0, 0)
    assert stats.output_tokens == 50


def test_requests_over_the_concurrency_bound_are_dropped_and_counted():
    vt = VirtualTime()

    async def scenario() -> LoadStats:
        gate = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            await gate.wait()
            return ok_response(request)

        gen = LoadGenerator(
            "http://router", arrivals(10), transport=httpx.MockTransport(handler),
            monotonic=vt.monotonic, sleep=vt.sleep, concurrency=3,
        )  # fmt: skip
        task = asyncio.create_task(gen.run())
        for _ in range(100_000):  # bounded: a stuck scheduler fails here, not at a timeout
            if gen.stats.scheduled >= 10:
                break
            await asyncio.sleep(0)
        assert gen.stats.scheduled == 10
        gate.set()
        return await task

    stats = asyncio.run(scenario())
    assert (stats.scheduled, stats.sent, stats.dropped, stats.ok) == (10, 3, 7, 3)


def test_requests_carry_tokens_tenant_and_priority_by_mix():
    vt = VirtualTime()
    seen: list[tuple[str, str, dict]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers[wire.TENANT_HEADER], request.headers[wire.PRIORITY_HEADER],
                     json.loads(request.content)))  # fmt: skip
        return ok_response(request)

    source = Source(pattern="constant:50", tokens=(40, 7), mix="chat:3:0,batch:1:1", seed=3)
    gen = LoadGenerator(
        "http://router", source.arrivals(duration_s=20), transport=httpx.MockTransport(handler),
        monotonic=vt.monotonic, sleep=vt.sleep, stream_share=0.25, seed=3,
    )  # fmt: skip
    stats = run(gen)
    assert 850 <= stats.sent == len(seen) <= 1150  # Poisson around 50/s x 20 s
    tenants = Counter(t for t, _, _ in seen)
    assert tenants["chat"] / len(seen) == pytest.approx(0.75, abs=0.05)
    assert {(t, p) for t, p, _ in seen} == {("chat", "0"), ("batch", "1")}
    assert {wire.count_tokens(b["prompt"]) for _, _, b in seen} == {40}
    assert {(b["max_tokens"], b["ignore_eos"]) for _, _, b in seen} == {(7, True)}
    streamed = sum(b["stream"] for _, _, b in seen) / len(seen)
    assert streamed == pytest.approx(0.25, abs=0.05)
    assert all(b["stream_options"] == {"include_usage": True} for _, _, b in seen if b["stream"])
    assert stats.ok == stats.sent and stats.output_tokens == 7 * stats.sent


@pytest.mark.parametrize(
    ("status", "content", "stream", "field"),
    [
        pytest.param(429, b'{"error": {}}', False, "rejected", id="a 429 counts as rejected"),
        pytest.param(503, b'{"error": {}}', False, "errors", id="a 503 counts as an error"),
        pytest.param(200, wire.sse(wire.error_body("replica died", "upstream_error", 502))
                     + wire.DONE, True, "errors", id="an error event in a stream is an error"),
    ],
)  # fmt: skip
def test_failures_are_counted_by_kind(status, content, stream, field):
    vt = VirtualTime()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content)

    gen = LoadGenerator(
        "http://router", arrivals(4), transport=httpx.MockTransport(handler),
        monotonic=vt.monotonic, sleep=vt.sleep, stream_share=1.0 if stream else 0.0,
    )  # fmt: skip
    stats = run(gen)
    assert getattr(stats, field) == 4
    assert stats.ok == 0


def test_connection_errors_are_counted_not_raised():
    vt = VirtualTime()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    gen = LoadGenerator("http://router", arrivals(3), transport=httpx.MockTransport(handler),
                        monotonic=vt.monotonic, sleep=vt.sleep)  # fmt: skip
    stats = run(gen)
    assert stats.errors == 3 and stats.by_status == {"ConnectError": 3}


def test_duration_stops_the_schedule():
    vt = VirtualTime()
    gen = LoadGenerator(
        "http://router", arrivals(100, gap=1.0), transport=httpx.MockTransport(ok_response),
        monotonic=vt.monotonic, sleep=vt.sleep, duration_s=10.0,
    )  # fmt: skip
    assert run(gen).sent == 10


def test_trace_source_replays_trace_times_compressed():
    path = trace_file("azure_llm_2023_conv.csv")
    rows = read_azure_csv(path).rows
    got = list(Source(trace=str(path), time_compression=10.0).arrivals(duration_s=30))
    assert len(got) == len(rows)  # a trace replays whole; the generator cuts at its duration
    for a, r in zip(got[:50], rows[:50], strict=True):
        assert a.t_offset_s == pytest.approx(r.t_offset_s / 10.0)
        assert (a.input_tokens, a.output_tokens) == (r.input_tokens, r.output_tokens)


def test_profile_source_follows_the_fitted_rate():
    # 600 s of the conversation profile: about 5.5 requests/s (Azure 2023 conversation).
    got = list(Source(profile="conv", seed=1).arrivals(duration_s=600))
    assert 5.5 * 600 * 0.7 < len(got) < 5.5 * 600 * 1.3
    assert all(0 <= a.t_offset_s < 600 for a in got)


def test_looped_source_repeats_after_its_period():
    got = list(zip(range(6), looped(lambda: arrivals(3, gap=1.0), period_s=5.0), strict=False))
    assert [a.t_offset_s for _, a in got] == [0, 1, 2, 5, 6, 7]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(Source(), "exactly one traffic source", id="no source"),
        pytest.param(Source(profile="conv", pattern="constant:1"), "exactly one traffic source",
                     id="two sources"),
        pytest.param(Source(pattern="zigzag:3"), "bad traffic pattern", id="unknown pattern"),
        pytest.param(Source(pattern="constant:1", mix="chat"), "bad tenant mix entry",
                     id="a mix entry without weight"),
    ],
)  # fmt: skip
def test_bad_sources_are_refused_with_a_clear_error(source, message):
    with pytest.raises(SimError, match=message):
        list(source.arrivals(duration_s=1))


def test_progress_bar_shows_share_done_and_counts():
    out = io.StringIO()
    stats = LoadStats(sent=40, ok=35, errors=1, rejected=2, dropped=3, in_flight=2)
    Progress(out, total_s=20.0).update(stats, 10.0)
    line = out.getvalue()
    assert line.startswith("\r[############............]  50%")
    assert "sent 40 ok 35 err 1 429 2 drop 3 inflight 2 4.0 req/s" in line
