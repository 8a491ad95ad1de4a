"""The alerting API through the app ``serve`` builds: roles, silences, dead letters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from controlplane.alerting import build_alerting
from controlplane.api.app import create_app
from controlplane.api.auth import TokenAuth
from controlplane.config import GovernorConfig
from controlplane.server import build_context
from tests.alerts.harness import Reply, sig

VIEWER = "viewer-token-0123456789"
OPERATOR = "operator-token-0123456789"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def app(store, clock, recorder) -> Iterator[tuple[TestClient, object]]:  # type: ignore[no-untyped-def]
    cfg = GovernorConfig.model_validate({"alerting": {
        "receivers": [{"name": "hook", "kind": "webhook", "url": recorder.url + "/hook"}],
        "routes": [{"receiver": "hook", "group_wait_s": 0}],
        "tick_s": 3600,  # the test ticks by hand, at virtual times
    }})  # fmt: skip
    auth = TokenAuth.parse(f"viewer:{VIEWER},operator:{OPERATOR}")
    ctx = build_context(cfg, store, auth, clock=clock, builders=[build_alerting])
    with TestClient(create_app(ctx)) as client:
        yield client, ctx.services["alerts"]


def test_alerts_list_needs_a_viewer_and_shows_state_and_delivery(app, clock):
    client, engine = app
    engine.process([sig(pool="a")], clock.now())
    assert client.get("/api/v1/alerts").status_code == 401
    r = client.get("/api/v1/alerts", headers=_auth(VIEWER))
    assert r.status_code == 200
    (alert,) = r.json()["alerts"]
    assert alert["state"] == "firing" and alert["labels"]["pool"] == "a"
    assert alert["silenced"] is False
    assert alert["receivers"] == [
        {"receiver": "hook", "groupKey": alert["receivers"][0]["groupKey"], "status": "pending"}
    ]
    engine.tick(clock.now())
    (alert,) = client.get("/api/v1/alerts", headers=_auth(VIEWER)).json()["alerts"]
    assert alert["receivers"][0]["status"] == "delivered"
    assert engine.firing("chat-ttft")[0]["fingerprint"] == alert["fingerprint"]
    assert engine.firing("other-slo") == []
    r = client.get("/api/v1/alerts?state=bogus", headers=_auth(VIEWER))
    assert r.status_code == 400 and "state" in r.json()["detail"]


def test_silences_are_created_listed_and_expired_by_operators(app, clock):
    client, engine = app
    body = {"matchers": [{"name": "pool", "value": "a"}], "endsAt": clock.now() + 600,
            "comment": "maintenance"}  # fmt: skip
    assert client.post("/api/v1/silences", json=body, headers=_auth(VIEWER)).status_code == 403
    r = client.post("/api/v1/silences", json=body, headers=_auth(OPERATOR))
    assert r.status_code == 201
    sid = r.json()["id"]
    assert r.json()["status"]["state"] == "active"
    assert r.json()["createdBy"].startswith("operator:")
    listed = client.get("/api/v1/silences", headers=_auth(OPERATOR)).json()["silences"]
    assert [s["id"] for s in listed] == [sid]
    one = client.get(f"/api/v1/silences/{sid}", headers=_auth(OPERATOR))
    assert one.status_code == 200 and one.json()["comment"] == "maintenance"
    # Every silence route is the operator's: a viewer may neither see nor change them.
    for method, url in (("GET", "/api/v1/silences"), ("GET", f"/api/v1/silences/{sid}"),
                        ("DELETE", f"/api/v1/silences/{sid}")):  # fmt: skip
        assert client.request(method, url, headers=_auth(VIEWER)).status_code == 403, url

    engine.process([sig(pool="a"), sig(pool="b")], clock.now())
    alerts = client.get("/api/v1/alerts", headers=_auth(VIEWER)).json()["alerts"]
    assert {a["labels"]["pool"]: a["silenced"] for a in alerts} == {"a": True, "b": False}

    r = client.delete(f"/api/v1/silences/{sid}", headers=_auth(OPERATOR))
    assert r.status_code == 200 and r.json()["status"]["state"] == "expired"
    alerts = client.get("/api/v1/alerts", headers=_auth(VIEWER)).json()["alerts"]
    assert not any(a["silenced"] for a in alerts)
    assert client.delete("/api/v1/silences/nope", headers=_auth(OPERATOR)).status_code == 404


def test_bad_silence_is_a_400_naming_every_problem(app):
    client, _ = app
    r = client.post("/api/v1/silences", json={"matchers": [{"name": "9"}]},
                    headers=_auth(OPERATOR))  # fmt: skip
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "matchers[0].name" in detail and "endsAt: required" in detail


def test_dead_letters_are_visible_to_viewers_and_requeued_by_operators(app, clock, recorder):
    client, engine = app
    recorder.script.append(Reply(400, body=b"no"))
    engine.process([sig()], clock.now())
    engine.tick(clock.now())
    r = client.get("/api/v1/alerts/dead-letters", headers=_auth(VIEWER))
    (dead,) = r.json()["deadLetters"]
    assert dead["lastStatus"] == 400 and dead["receiver"] == "hook"
    url = f"/api/v1/alerts/dead-letters/{dead['id']}/requeue"
    assert client.post(url, headers=_auth(VIEWER)).status_code == 403
    assert client.post(url, headers=_auth(OPERATOR)).status_code == 200
    engine.tick(clock.now())
    assert len(recorder.received) == 2
    assert client.get("/api/v1/alerts/dead-letters", headers=_auth(VIEWER)).json()["count"] == 0
    assert client.post(url, headers=_auth(OPERATOR)).status_code == 404
    health = client.get("/healthz").json()["components"]["alerting"]
    assert health["ok"] is True and health["dead_letters"] == 0
    metrics = client.get("/metrics").text
    assert "governor_alerts_firing 1.0" in metrics
    assert "governor_alerts_dead_letters 0.0" in metrics


def test_serve_component_ticks_on_its_own_and_reports_health(store, clock, recorder):
    import httpx

    from alerts.engine import AlertEngine
    from controlplane.alerting import AlertingComponent
    from tests.alerts.harness import alerting, webhook

    cfg = alerting([webhook(recorder)], [{"receiver": "hook", "group_wait_s": 0}])
    http = httpx.Client()
    engine = AlertEngine(store=store, config=cfg, clock=clock, http=http)
    component = AlertingComponent(engine, clock, http, period_s=0.01)
    component.start()
    try:
        engine.process([sig()], clock.now())
        (got,) = recorder.wait_for(1, timeout=30)  # sent by the component's thread
        assert got.json["status"] == "firing"
    finally:
        component.stop()
    health = component.health()
    assert health["ok"] is True and health["firing"] == 1 and health["open_deliveries"] == 0
