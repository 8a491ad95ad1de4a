"""The scraper against real loopback HTTP servers: slow and dead targets stall nobody."""

from __future__ import annotations

import json
import threading
import time

import pytest

from collector.records import GpuSample, ListSink, ReplicaSample
from collector.scrape import Scraper
from collector.scrape_targets import FileDiscovery, Target
from controlplane.clock import ManualClock
from tests.fakes.metrics_server import closed_port, fixture, metrics_server


class SignalSink(ListSink):
    """Collects rows and signals when a row of some replica arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def wait_for(self, key: str) -> threading.Event:
        return self.arrived.setdefault(key, threading.Event())

    def emit(self, records) -> None:
        with self._lock:
            super().emit(records)
            for r in records:
                self.wait_for(getattr(r, "replica", "") or getattr(r, "node", "")).set()


def until(cond, timeout=10.0):
    """Poll a condition on a live server loop (no fixed sleeps); fail with a message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def test_one_round_scrapes_good_targets_and_marks_dead_and_slow_ones_down():
    clock = ManualClock(1_763_500_000.0)
    sink = SignalSink()
    with metrics_server() as srv:
        hang = threading.Event()
        targets = [
            Target(srv.serve("/vllm", fixture("vllm.txt")), "vllm", "chat", "r-good"),
            Target(srv.serve("/dcgm", fixture("dcgm.txt")), "dcgm", "chat"),
            Target(srv.serve("/slow", fixture("vllm.txt"), hang=hang), "vllm", "chat", "r-slow"),
            Target(f"http://127.0.0.1:{closed_port()}/metrics", "sglang", "chat", "r-dead"),
            Target(srv.serve("/err", "oops", status=503), "tgi", "chat", "r-503"),
        ]
        scraper = Scraper(sink, targets=targets, timeout_s=30, concurrency=8, clock=clock)
        result: list = []
        t = threading.Thread(target=lambda: result.extend(scraper.scrape_once()))
        t.start()
        # The good targets' rows are in the sink while the slow one still hangs.
        assert sink.wait_for("r-good").wait(10)
        assert sink.wait_for("6d6d7dc3ce21").wait(10)
        assert sink.wait_for("r-dead").wait(10)
        assert t.is_alive() and not hang.is_set()
        health = {h.replica or h.url: h for h in scraper.health()}
        assert health["r-good"].up is True and health["r-slow"].up is None
        hang.set()
        t.join(10)
    health = {h.replica or h.url: h for h in scraper.health()}
    assert health["r-good"].up and health["r-good"].last_success == clock.now()
    assert health["r-good"].series > 100 and health["r-good"].last_error == ""
    assert health["r-dead"].up is False
    assert "connect" in health["r-dead"].last_error.lower()
    assert health["r-503"].last_error.startswith("HTTP 503")
    assert health["r-dead"].consecutive_failures == 1
    by_replica = {r.replica: r for r in sink.records if isinstance(r, ReplicaSample)}
    assert by_replica["r-good"].running == 25.0 and by_replica["r-good"].up
    assert by_replica["r-good"].scrape_duration_s is not None
    assert by_replica["r-dead"].up is False and by_replica["r-dead"].running is None
    assert by_replica["r-503"].up is False and by_replica["r-503"].engine == "tgi"
    gpus = [r for r in sink.records if isinstance(r, GpuSample)]
    assert sorted(g.gpu for g in gpus) == [0, 1]


def test_a_target_slower_than_the_timeout_is_down_with_a_timeout_error():
    sink = ListSink()
    with metrics_server() as srv:
        hang = threading.Event()
        slow = Target(srv.serve("/slow", "x 1\n", hang=hang), "vllm", "p", "slow")
        fast = Target(srv.serve("/fast", fixture("tgi.txt")), "tgi", "p", "fast")
        scraper = Scraper(sink, targets=[slow, fast], timeout_s=0.3)
        health = {h.replica: h for h in scraper.scrape_once()}
        # The round ended while the server still hangs: bounded by the timeout, not by it.
        assert not hang.is_set() and srv.routes["/slow"].hits == 1
    assert health["slow"].up is False and health["slow"].last_error == "timeout after 0.3s"
    assert health["fast"].up is True
    assert {r.replica: r.up for r in sink.records} == {"slow": False, "fast": True}


def test_concurrency_limit_bounds_fetches_in_flight():
    with metrics_server() as srv:
        gates = [threading.Event() for _ in range(3)]
        targets = [
            Target(srv.serve(f"/t{i}", fixture("tgi.txt"), hang=gates[i]), "tgi", "p", f"r{i}")
            for i in range(3)
        ]
        scraper = Scraper(ListSink(), targets=targets, timeout_s=30, concurrency=1)
        t = threading.Thread(target=scraper.scrape_once)
        t.start()
        routes = [srv.routes[f"/t{i}"] for i in range(3)]
        for _ in range(3):
            until(lambda: sum(r.hits for r in routes) >= 1 + sum(g.is_set() for g in gates))
            in_flight = [i for i, r in enumerate(routes) if r.hits and not gates[i].is_set()]
            assert len(in_flight) == 1, in_flight  # never two at once
            gates[in_flight[0]].set()
        t.join(10)
        assert [r.hits for r in routes] == [1, 1, 1]


def test_rates_flow_through_http_between_rounds():
    clock = ManualClock(1_763_500_000.0)
    sink = ListSink()
    with metrics_server() as srv:
        url = srv.serve("/m", fixture("sglang.txt"))
        scraper = Scraper(sink, targets=[Target(url, "sglang", "p", "r")], clock=clock)
        scraper.scrape_once()
        body = fixture("sglang.txt").replace(
            'sglang:generation_tokens_total{model_name="Qwen/Qwen2.5-32B-Instruct"} 1.3979512e+07',
            'sglang:generation_tokens_total{model_name="Qwen/Qwen2.5-32B-Instruct"} 1.3989512e+07',
        )
        assert body != fixture("sglang.txt")
        srv.routes["/m"].body = body
        clock.advance(10)
        scraper.scrape_once()
    assert [r.generation_tokens_per_s for r in sink.records] == [None, pytest.approx(1000.0)]


def test_background_loop_follows_file_sd_changes(tmp_path):
    sink = SignalSink()
    sd = tmp_path / "sd.json"
    with metrics_server() as srv:
        srv.serve("/metrics", fixture("vllm.txt"))
        sd.write_text(
            json.dumps(
                [
                    {
                        "targets": [f"127.0.0.1:{srv.port}"],
                        "labels": {"kind": "vllm", "pool": "a", "replica": "one"},
                    }
                ]
            )
        )
        scraper = Scraper(sink, discovery=FileDiscovery([sd]), interval_s=0.2, timeout_s=2)
        scraper.start()
        try:
            assert sink.wait_for("one").wait(10)
            # Relabel the same address: the old entry goes, the new one is scraped.
            sd.write_text(
                json.dumps(
                    [
                        {
                            "targets": [f"127.0.0.1:{srv.port}"],
                            "labels": {"kind": "vllm", "pool": "a", "replica": "two"},
                        }
                    ]
                )
            )
            os_mtime_bump(sd)
            assert sink.wait_for("two").wait(15)
            until(lambda: [h.replica for h in scraper.health()] == ["two"])
            # A broken edit keeps the target and reports the file's problem.
            sd.write_text("[{")
            os_mtime_bump(sd, 2)
            until(lambda: str(sd) in scraper.discovery_errors(), 15)
            assert [h.replica for h in scraper.health()] == ["two"]
        finally:
            scraper.stop()
        assert scraper._thread is None


def os_mtime_bump(path, by=1):
    import os

    st = os.stat(path)
    os.utime(path, (st.st_atime + by, st.st_mtime + by))


def test_prometheus_client_servers_answer_our_accept_header_with_the_text_format():
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
    from prometheus_client.exposition import choose_encoder

    from collector.scrape_parse import ACCEPT

    # vLLM and SGLang serve /metrics with prometheus-client, which picks OpenMetrics (and
    # escapes ':' in names) whenever the Accept header mentions it.
    assert choose_encoder(ACCEPT)[1].startswith("text/plain")
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    running = Gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        labels,
        registry=reg,
    )
    tokens = Counter(
        "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=reg
    )
    running.labels("m", "0").set(9)
    tokens.labels("m", "0").inc(1000)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        clock = ManualClock(1_763_500_000.0)
        sink = ListSink()
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        scraper = Scraper(sink, targets=[Target(url, "vllm", "p", "r")], clock=clock)
        scraper.scrape_once()
        tokens.labels("m", "0").inc(500)
        clock.advance(5)
        scraper.scrape_once()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    first, second = sink.records
    assert (first.running, first.model, second.generation_tokens_per_s) == (9.0, "m", 100.0)
