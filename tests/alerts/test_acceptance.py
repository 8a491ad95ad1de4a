"""Clock-driven acceptance tests, in the style of Alertmanager's own.

A real HTTP receiver on loopback records each notification with the virtual time it
arrived; the test feeds signals at virtual times and asserts what arrives when.
"""

from __future__ import annotations

import pytest

from tests.alerts.harness import Harness, alerting, sig, webhook


@pytest.fixture
def harness(store, clock):  # type: ignore[no-untyped-def]
    made = []

    def make(receivers, routes=None, **kw):  # type: ignore[no-untyped-def]
        interval = kw.pop("interval", 10.0)
        env = kw.pop("env", None)
        routes = routes if routes is not None else [{"receiver": receivers[0]["name"]}]
        h = Harness(store, clock, alerting(receivers, routes, **kw), interval=interval, env=env)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def times(recorder, t0):  # type: ignore[no-untyped-def]
    return [round(r.at - t0) for r in recorder.received]


def test_first_notification_waits_group_wait_and_groups_alerts(harness, recorder, clock):
    h = harness([webhook(recorder)])
    t0 = clock.now()
    h.step([sig(pool="a")])
    h.run(20, [sig(pool="a"), sig(pool="b")])  # a second instance joins the same group
    assert recorder.received == []
    h.run(10, [sig(pool="a"), sig(pool="b")])
    assert times(recorder, t0) == [30]
    body = recorder.received[0].json
    assert body["status"] == "firing"
    assert [a["labels"]["pool"] for a in body["alerts"]] == ["a", "b"]
    assert body["groupLabels"] == {"alertname": "SLOBurnRateHigh", "slo": "chat-ttft"}
    assert body["commonLabels"] == {"alertname": "SLOBurnRateHigh", "severity": "page",
                                    "slo": "chat-ttft"}  # fmt: skip
    assert body["groupKey"] == '{}/{}:{alertname="SLOBurnRateHigh", slo="chat-ttft"}'


def test_new_alert_in_a_flushed_group_waits_for_group_interval(harness, recorder, clock):
    h = harness([webhook(recorder)])
    t0 = clock.now()
    h.step([sig(pool="a")])
    h.run(60, [sig(pool="a")])
    h.run(100, [sig(pool="a"), sig(pool="b")])  # b appears at t0+70
    assert times(recorder, t0) == [30]
    h.run(200, [sig(pool="a"), sig(pool="b")])
    # Group flushes at 30 + 300 = 330: b is news, so the group is notified again.
    assert times(recorder, t0) == [30, 330]
    assert len(recorder.received[1].json["alerts"]) == 2


def test_unchanged_group_repeats_only_after_repeat_interval(harness, recorder, clock):
    h = harness([webhook(recorder)],
                [{"receiver": "hook", "repeat_interval_s": 3600}])  # fmt: skip
    t0 = clock.now()
    h.step([sig()])
    h.run(3600 + 300, [sig()], every=30)
    # Flushes every 300 s from t0+30; the first at or after 30+3600 repeats.
    assert times(recorder, t0) == [30, 3630]


def test_resolve_is_sent_with_ends_at_at_resolve_time(harness, recorder, clock):
    h = harness([webhook(recorder)])
    t0 = clock.now()
    h.step([sig()])
    h.run(60, [sig()])
    h.run(10, [sig(active=False)])  # resolves at t0+70
    h.run(300, [sig(active=False)])
    assert times(recorder, t0) == [30, 330]
    body = recorder.received[1].json
    assert body["status"] == "resolved"
    (alert,) = body["alerts"]
    assert alert["status"] == "resolved"
    assert alert["endsAt"] == _rfc(t0 + 70)
    assert alert["startsAt"] == _rfc(t0)


def test_send_resolved_false_sends_no_resolve(harness, recorder, clock):
    h = harness([webhook(recorder, send_resolved=False)])
    t0 = clock.now()
    h.step([sig()])
    h.run(60, [sig()])
    h.run(600, [sig(active=False)])
    assert times(recorder, t0) == [30]


def test_pending_alert_fires_only_after_for_and_clears_silently(harness, recorder, clock):
    h = harness([webhook(recorder)])
    t0 = clock.now()
    pending = sig()
    held = type(pending)(labels=pending.labels, annotations=pending.annotations, active=True,
                         for_s=60)  # fmt: skip
    h.step([held])
    h.run(50, [held])
    h.run(100, [sig(active=False)])  # cleared before for_s: never fires
    assert recorder.received == []
    assert h.engine.alerts() == []
    h.step([held])
    t1 = clock.now()
    h.run(60, [held])  # fires at t1+60, notified at t1+90
    h.run(40, [held])
    assert [round(r.at - t1) for r in recorder.received] == [90]
    (alert,) = recorder.received[0].json["alerts"]
    assert alert["startsAt"] == _rfc(t1 + 60)  # Prometheus sends FiredAt
    assert t0 < t1


def test_silenced_alert_is_not_notified_until_the_silence_expires(harness, recorder, clock):
    h = harness([webhook(recorder)])
    t0 = clock.now()
    silence = h.engine.create_silence({
        "matchers": [{"name": "slo", "value": "chat-.*", "isRegex": True}],
        "endsAt": t0 + 3600, "comment": "deploy",
    })  # fmt: skip
    h.step([sig()])
    h.run(400, [sig()])
    assert recorder.received == []
    (listed,) = h.engine.alerts()
    assert listed["silenced"] is True and listed["silencedBy"] == [silence["id"]]
    assert listed["receivers"][0]["status"] == "silenced"
    h.engine.expire_silence(silence["id"])
    expired_at = clock.now()
    h.run(300, [sig()])
    assert len(recorder.received) == 1
    assert 0 < recorder.received[0].at - expired_at <= 300
    assert h.engine.alerts()[0]["silenced"] is False


def _rfc(ts: float) -> str:
    from alerts.model import rfc3339

    return rfc3339(ts)


def test_silencing_a_notified_group_does_not_make_it_page_again_later(harness, recorder, clock):
    h = harness([webhook(recorder)])
    t0 = clock.now()
    h.step([sig()])
    h.run(30, [sig()])
    silence = h.engine.create_silence(
        {"matchers": [{"name": "slo", "value": "chat-ttft"}], "endsAt": clock.now() + 3600}
    )
    h.run(600, [sig()])
    h.engine.expire_silence(silence["id"])
    h.run(900, [sig()], every=30)
    # As in Alertmanager: muted flushes leave the log alone, so nothing is news.
    assert times(recorder, t0) == [30]
