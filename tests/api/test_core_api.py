"""Core API: health, self-metrics, token roles, and request records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from collector.records import RequestRecord, as_row, columns
from controlplane.api.app import create_app
from controlplane.api.auth import TokenAuth
from controlplane.config import GovernorConfig
from controlplane.errors import ConfigError
from controlplane.server import BindRefused, build_context, check_bind
from controlplane.store.chdb_driver import ChdbStore

VIEWER = "viewer-token-0123456789"
ADMIN = "admin-token-0123456789ab"


@pytest.fixture
def client(store: ChdbStore, clock) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    auth = TokenAuth.parse(f"viewer:{VIEWER},admin:{ADMIN}")
    clock.set(datetime.now(UTC).timestamp())
    ctx = build_context(GovernorConfig(), store, auth, clock=clock, builders=[])
    with TestClient(create_app(ctx)) as c:
        yield c


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_healthz_reports_the_store_without_a_token(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["store"]["driver"] == "chdb" and body["store"]["schema_version"] >= 1


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.get("/healthz")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "governor_store_up 1.0" in r.text
    assert 'governor_http_requests_total{code="200",method="GET",route="/healthz"}' in r.text


def test_http_metrics_count_by_route_template_and_status(client: TestClient) -> None:
    client.get("/api/v1/silences/abc")  # no token
    client.get("/no/such/path")
    text = client.get("/metrics").text
    route = "/api/v1/silences/{silence_id}"
    assert f'governor_http_requests_total{{code="401",method="GET",route="{route}"}} 1.0' in text
    assert 'governor_http_requests_total{code="404",method="GET",route="unmatched"} 1.0' in text
    assert 'governor_http_request_duration_seconds_count{route="unmatched"} 1.0' in text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (_auth("wrong-token-00000000000"), 401),
        ({"Authorization": VIEWER}, 401),
        (_auth(VIEWER), 200),
        (_auth(ADMIN), 200),
    ],  # fmt: skip
    ids=["no token", "unknown token", "token without Bearer", "viewer", "admin"],
)
def test_api_routes_need_a_known_bearer_token(client: TestClient, headers, status) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/v1/requests", headers=headers).status_code == status


def test_request_records_come_back_in_milliseconds_with_all_fields(
    client: TestClient, store: ChdbStore
) -> None:
    now = datetime.now(UTC)
    recs = [
        RequestRecord(ts=now - timedelta(minutes=5), pool="chat", model="llama", replica="r1",
                      tenant="acme", status="ok", finish_reason="stop",
                      trace_id="0af7651916cd43dd8448eb211c80319c", ttft_us=245_500,
                      tpot_us=20_000, e2e_us=4_245_500, queue_us=1_000, input_tokens=100,
                      output_tokens=201, cached_tokens=64, output_tokens_per_s=50.0,
                      cost_usd=0.0125),
        RequestRecord(ts=now - timedelta(minutes=4), pool="other", model="m"),
        RequestRecord(ts=now - timedelta(hours=3), pool="chat", model="llama"),
    ]  # fmt: skip
    store.insert_rows("requests", columns(RequestRecord), [as_row(r) for r in recs])
    r = client.get("/api/v1/requests", params={"pool": "chat"}, headers=_auth(VIEWER))
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 1  # default window is the last hour
    row = body["requests"][0]
    assert row["ttft_ms"] == pytest.approx(245.5)
    assert row["tpot_ms"] == pytest.approx(20.0)
    assert row["e2e_ms"] == pytest.approx(4245.5)
    assert row["queue_ms"] == pytest.approx(1.0)
    assert (row["input_tokens"], row["output_tokens"], row["cached_tokens"]) == (100, 201, 64)
    assert row["output_tokens_per_s"] == pytest.approx(50.0)
    assert row["cost_usd"] == pytest.approx(0.0125)
    assert (row["pool"], row["model"], row["replica"], row["tenant"]) == (
        "chat",
        "llama",
        "r1",
        "acme",
    )
    assert (row["status"], row["error_type"], row["finish_reason"]) == ("ok", "", "stop")
    assert row["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert row["ts"].endswith("Z")
    since = (now - timedelta(hours=4)).isoformat()
    r = client.get(
        "/api/v1/requests", params={"pool": "chat", "since": since}, headers=_auth(VIEWER)
    )
    assert r.json()["count"] == 2
    r = client.get("/api/v1/requests", params={"since": since, "limit": 2}, headers=_auth(VIEWER))
    assert r.json()["count"] == 2


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
        ({"since": "yesterday"}, "since: expected RFC 3339 time or unix seconds"),
    ],  # fmt: skip
    ids=["limit below 1", "limit not a number", "since not a time"],
)
def test_bad_query_parameters_get_400_naming_the_parameter(
    client: TestClient, params, fragment
) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/requests", params=params, headers=_auth(VIEWER))
    assert r.status_code == 400
    body = r.json()
    assert fragment in (body.get("error") or body.get("detail") or "")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("viewer", "expected role:token"),
        ("boss:abcdefghijklmnop", "unknown role 'boss'"),
        ("viewer:short", "at least 16"),
        ("", "no tokens given"),
    ],  # fmt: skip
)
def test_bad_token_specs_are_rejected_with_a_reason(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        TokenAuth.parse(spec)


def test_without_configured_tokens_only_loopback_binds() -> None:
    check_bind("127.0.0.1", tokens_configured=False)
    check_bind("::1", tokens_configured=False)
    check_bind("0.0.0.0", tokens_configured=True)
    check_bind("localhost", tokens_configured=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "gateway.internal"):
        with pytest.raises(BindRefused, match=f"refusing to listen on {host}"):
            check_bind(host, tokens_configured=False)


def test_generated_tokens_cover_every_role() -> None:
    auth, by_role = TokenAuth.generated()
    assert set(by_role) == {"viewer", "operator", "admin"}
    for role, token in by_role.items():
        p = auth.authenticate(f"Bearer {token}")
        assert p is not None and p.role == role
