"""What the policy and the API ask of the scrape integration, built from governor.yaml."""

from __future__ import annotations

import json

from collector.records import ListSink, ReplicaSample
from controlplane.config import parse_config
from controlplane.scraping import ScrapeService, scraper_from_config
from tests.fakes.metrics_server import closed_port, fixture, metrics_server


def test_config_targets_and_file_sd_become_one_scraper_with_health_for_the_policy(tmp_path):
    with metrics_server() as srv:
        good = srv.serve("/m", fixture("vllm.txt"))
        dead = f"http://127.0.0.1:{closed_port()}/metrics"
        (tmp_path / "sd.yaml").write_text(
            json.dumps(
                [
                    {
                        "targets": [f"127.0.0.1:{srv.port}"],
                        "labels": {"kind": "tgi", "pool": "batch", "__metrics_path__": "/tgi"},
                    }
                ]
            )
        )
        srv.serve("/tgi", fixture("tgi.txt"))
        cfg = parse_config(
            {
                "scrape": {
                    "timeout_s": 2,
                    "file_sd": ["sd.yaml"],
                    "targets": [
                        {"url": good, "kind": "vllm", "pool": "chat", "replica": "a"},
                        {"url": dead, "kind": "vllm", "pool": "chat", "replica": "b"},
                        {
                            "url": "http://127.0.0.1:1/metrics",
                            "kind": "tgi",
                            "pool": "batch",
                            "model": "tgi-model",
                        },
                    ],
                }
            },
            source=str(tmp_path / "governor.yaml"),
        )
        sink = ListSink()
        service = ScrapeService(scraper_from_config(cfg, sink))
        assert service.replica_up("chat", "a") is None  # not scraped yet
        service.scraper.scrape_once()
    assert service.replica_up("chat", "a") is True
    assert service.replica_up("chat", "b") is False
    assert service.replica_up("chat", "nope") is None
    assert service.down_replicas("chat") == ["b"]
    # The TGI target from file_sd (relative path resolved against the config file) is up;
    # the static one on port 1 is down and named by its host:port.
    assert service.replica_up("batch", f"127.0.0.1:{srv.port}") is True
    assert service.down_replicas("batch") == ["127.0.0.1:1"]
    down = [r for r in sink.records if isinstance(r, ReplicaSample) and not r.up]
    assert {(r.replica, r.model) for r in down} == {("b", ""), ("127.0.0.1:1", "tgi-model")}
    h = service.health()
    assert (h["targets"], h["up"], h["down"], h["running"]) == (4, 2, 2, False)
