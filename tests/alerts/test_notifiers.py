"""PagerDuty Events v2, Slack incoming webhooks and pushes to an Alertmanager, on loopback."""

from __future__ import annotations

from tests.alerts.harness import Harness, Reply, alerting, sig


def _harness(store, clock, receivers, **kw):  # type: ignore[no-untyped-def]
    env = kw.pop("env", None)
    routes = kw.pop("routes", [{"receiver": receivers[0]["name"]}])
    return Harness(store, clock, alerting(receivers, routes, **kw), env=env)


def test_pagerduty_triggers_then_resolves_with_one_dedup_key(store, clock, recorder):
    rcv = {"name": "pd", "kind": "pagerduty", "url": recorder.url + "/v2/enqueue",
           "routing_key_env": "PD_KEY"}  # fmt: skip
    h = _harness(store, clock, [rcv], env={"PD_KEY": "R0UTINGKEY"})
    recorder.script.extend([Reply(202, body=b'{"status":"success"}')] * 2)
    h.step([sig(pool="chat-8b")])
    h.run(60, [sig(pool="chat-8b")])
    h.run(300, [sig(active=False, pool="chat-8b")])
    trigger, resolve = (r.json for r in recorder.received)
    assert recorder.received[0].path == "/v2/enqueue"
    assert trigger["routing_key"] == "R0UTINGKEY" and trigger["event_action"] == "trigger"
    p = trigger["payload"]
    assert p["severity"] == "critical"  # severity=page
    assert p["summary"].startswith("[FIRING:1] SLOBurnRateHigh chat-ttft")
    assert p["source"] == "chat-8b" and p["group"] == "chat-ttft"
    assert p["class"] == "SLOBurnRateHigh" and p["timestamp"].endswith("Z")
    assert resolve == {"event_action": "resolve", "dedup_key": trigger["dedup_key"],
                       "routing_key": "R0UTINGKEY"}  # fmt: skip
    # The routing key is a secret: it is added when sending, never stored.
    bodies = store.query("SELECT body FROM alert_deliveries").rows
    assert bodies and all("R0UTINGKEY" not in b for (b,) in bodies)
    h.close()


def test_pagerduty_severity_maps_from_the_severity_label(store, clock, recorder):
    rcv = {"name": "pd", "kind": "pagerduty", "url": recorder.url,
           "routing_key_env": "PD_KEY"}  # fmt: skip
    h = _harness(store, clock, [rcv], env={"PD_KEY": "k"})
    h.step([sig(severity="ticket")])
    h.run(30, [sig(severity="ticket")])
    assert recorder.received[0].json["payload"]["severity"] == "warning"
    h.close()


def test_slack_message_has_text_and_blocks_with_a_readable_summary(store, clock, recorder):
    rcv = {"name": "slack", "kind": "slack", "url": recorder.url + "/services/T/B/X"}
    h = _harness(store, clock, [rcv])
    s = sig()
    s.annotations["runbook_url"] = "https://runbooks.example/burn"  # as SLO rules set it
    h.step([s])
    h.run(30, [s])
    body = recorder.received[0].json
    assert body["text"].startswith("[FIRING:1] SLOBurnRateHigh chat-ttft")
    assert "SLOBurnRateHigh on chat-ttft" in body["text"]
    header, section, context = body["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert "<https://runbooks.example/burn|runbook>" in section["text"]["text"]
    assert "http://governor.test" in context["elements"][0]["text"]
    h.close()


def test_alertmanager_push_repeats_every_evaluation_and_carries_the_resolve(store, clock, recorder):
    rcv = {"name": "am", "kind": "alertmanager", "url": recorder.url}
    h = _harness(store, clock, [rcv], resend_delay_s=0)
    t0 = clock.now()
    h.step([sig()])
    h.run(30, [sig()])
    assert [round(r.at - t0) for r in recorder.received] == [0, 10, 20, 30]  # no group_wait
    assert {r.path for r in recorder.received} == {"/api/v2/alerts"}
    (alert,) = recorder.received[-1].json
    assert set(alert) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert alert["endsAt"] == _rfc(t0 + 30 + 40)  # eval time + 4 x interval
    assert alert["generatorURL"] == "http://governor.test/api/v1/slos/chat-ttft"
    h.run(10, [sig(active=False)])
    (alert,) = recorder.received[-1].json
    assert alert["endsAt"] == _rfc(t0 + 40) and alert["startsAt"] == _rfc(t0)
    h.run(15 * 60 + 30, [], every=60)
    pushes = len(recorder.received)
    h.run(300, [], every=60)
    assert len(recorder.received) == pushes  # resolved alerts are re-sent for 15 min only
    h.close()


def test_alertmanager_push_respects_resend_delay(store, clock, recorder):
    rcv = {"name": "am", "kind": "alertmanager", "url": recorder.url}
    h = _harness(store, clock, [rcv], resend_delay_s=60)
    t0 = clock.now()
    h.step([sig()])
    h.run(130, [sig()])
    assert [round(r.at - t0) for r in recorder.received] == [0, 70]
    (alert,) = recorder.received[0].json
    assert alert["endsAt"] == _rfc(t0 + 240)  # 4 x max(interval, resend delay)
    h.close()


def test_routes_match_labels_continue_and_regex(store, clock, recorder):
    receivers = [
        {"name": "pages", "kind": "webhook", "url": recorder.url + "/pages"},
        {"name": "audit", "kind": "webhook", "url": recorder.url + "/audit"},
        {"name": "tickets", "kind": "webhook", "url": recorder.url + "/tickets"},
    ]
    routes = [
        {"receiver": "audit", "match_re": {"slo": "chat-.*"}, "continue": True},
        {"receiver": "pages", "match": {"severity": "page"}},
        {"receiver": "tickets", "match": {"severity": "ticket"}},
    ]
    h = _harness(store, clock, receivers, routes=routes)
    signals = [sig(severity="page"), sig("Other", severity="ticket", slo="code-ttft")]
    h.step(signals)
    h.run(30, signals)
    got = sorted((r.path, r.json["alerts"][0]["labels"]["alertname"]) for r in recorder.received)
    assert got == [("/audit", "SLOBurnRateHigh"), ("/pages", "SLOBurnRateHigh"),
                   ("/tickets", "Other")]  # fmt: skip
    h.close()


def _rfc(ts: float) -> str:
    from alerts.model import rfc3339

    return rfc3339(ts)
