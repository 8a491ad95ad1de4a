"""Replica spans through the real OTLP/HTTP exporter into Governor's real /v1/traces and
store: what the demo relies on, in one process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from controlplane.api.app import create_app as governor_app
from controlplane.api.auth import TokenAuth
from controlplane.config import GovernorConfig, parse_config
from controlplane.ingest import build_otlp_ingest
from controlplane.server import build_context
from controlplane.sim import wire
from controlplane.sim.replica import Replica, ReplicaConfig
from controlplane.sim.replica_app import create_app as replica_app
from controlplane.sim.span_export import BufferingExporter
from controlplane.sim.supervisor import ThreadServer
from controlplane.store.queries import list_requests

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def test_replica_requests_become_request_rows_in_governor(store, tmp_path):
    data = {}
    if "writer" in GovernorConfig.model_fields:  # a spool of this test's own
        data["writer"] = {"spool_dir": str(tmp_path / "spool")}
    ctx = build_context(
        parse_config(data), store, TokenAuth({"v" * 16: "viewer"}), builders=[build_otlp_ingest]
    )
    governor = ThreadServer(governor_app(ctx)).start()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "vllm", "governor.pool": "chat-8b", "governor.replica": "chat-8b-7"}
        )
    )
    exporter = BufferingExporter(OTLPSpanExporter(endpoint=governor.url + "/v1/traces"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    replica = Replica(
        ReplicaConfig(name="chat-8b-7", cold_start_s=0.0), tracer=provider.get_tracer("vllm")
    )
    try:
        with ThreadServer(replica_app(replica)) as server:
            for tenant, out in (("chat", 5), ("batch", 9)):
                body = {"model": MODEL, "prompt": wire.make_prompt(40), "max_tokens": out,
                        "ignore_eos": True, "stream": out == 9}  # fmt: skip
                headers = {wire.TENANT_HEADER: tenant, wire.PRIORITY_HEADER: "1"}
                with httpx.stream(
                    "POST", server.url + "/v1/completions", json=body, headers=headers
                ) as resp:
                    assert resp.status_code == 200
                    resp.read()
        assert exporter.pending == 0
    finally:
        provider.shutdown()
        governor.stop()  # stops the writer: every accepted row is in the store
    now = datetime.now(UTC)
    rows = list_requests(
        store, pool="chat-8b", since=now - timedelta(minutes=5), until=now, limit=10
    )
    by_tenant = {r["tenant"]: r for r in rows}
    assert sorted(by_tenant) == ["batch", "chat"]
    for tenant, out in (("chat", 5), ("batch", 9)):
        r = by_tenant[tenant]
        assert (r["replica"], r["model"], r["status"]) == ("chat-8b-7", MODEL, "ok")
        assert (r["input_tokens"], r["output_tokens"], r["finish_reason"]) == (40, out, "length")
        assert 0 < r["ttft_ms"] < r["e2e_ms"]
        assert r["tpot_ms"] > 0 and r["queue_ms"] >= 0
