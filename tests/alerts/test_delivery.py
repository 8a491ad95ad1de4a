"""Delivery: retries with backoff, Retry-After, dead letters, signatures, restarts, outages."""

from __future__ import annotations

import base64
import math
import random
import time
from email.utils import format_datetime

import pytest

from alerts import signing
from alerts.errors import SignatureError
from controlplane.clock import utc
from controlplane.errors import StoreUnavailable
from tests.alerts.harness import Harness, Reply, alerting, sig, webhook


def _harness(store, clock, receivers, routes=None, **kw):  # type: ignore[no-untyped-def]
    interval = kw.pop("interval", 10.0)
    env = kw.pop("env", None)
    routes = routes if routes is not None else [{"receiver": receivers[0]["name"]}]
    return Harness(store, clock, alerting(receivers, routes, **kw), interval=interval, env=env)


def test_503_is_retried_after_jittered_backoff_with_the_same_webhook_id(store, clock, recorder):
    env = {"HOOK_SECRET": _secret(b"k" * 24)}
    h = _harness(store, clock, [webhook(recorder, secret_env="HOOK_SECRET")],
                 retry_initial_s=60, env=env)  # fmt: skip
    recorder.script.append(Reply(503, body=b"busy"))
    t0 = clock.now()
    h.step([sig()])
    h.run(30, [sig()])
    assert [round(r.at - t0) for r in recorder.received] == [30]
    (status,) = h.engine.alerts()[0]["receivers"]
    assert status["status"] == "retrying" and "503" in status["lastError"]
    # Full jitter: uniform(0, 60) from the engine's seeded RNG (seed 7 in the harness).
    delay = random.Random(7).uniform(0, 60)
    h.run(90, [sig()], every=1)
    first, second = recorder.received
    assert second.at - t0 == math.ceil(30 + delay)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-timestamp"] != second.headers["webhook-timestamp"]
    assert first.body == second.body
    signing.verify(second.body, second.headers, [b"k" * 24], now=clock.now())
    assert h.engine.alerts()[0]["receivers"][0]["status"] == "delivered"
    h.close()


@pytest.mark.parametrize(
    "retry_after",
    ["120", "http-date"],
    ids=["Retry-After in seconds is honoured", "Retry-After as an HTTP date is honoured"],
)
def test_429_waits_as_long_as_retry_after_says(store, clock, recorder, retry_after):
    h = _harness(store, clock, [webhook(recorder)])
    t0 = clock.now()
    value = (
        retry_after
        if retry_after != "http-date"
        else format_datetime(utc(t0 + 30 + 120), usegmt=True)
    )
    recorder.script.append(Reply(429, {"Retry-After": value}, b"slow down"))
    h.step([sig()])
    h.run(200, [sig()])
    assert [round(r.at - t0) for r in recorder.received] == [30, 150]
    h.close()


def test_400_goes_to_dead_letters_and_requeue_delivers_it(store, clock, recorder):
    h = _harness(store, clock, [webhook(recorder)])
    recorder.script.append(Reply(400, body=b"bad payload"))
    t0 = clock.now()
    h.step([sig()])
    h.run(600, [sig()])
    assert [round(r.at - t0) for r in recorder.received] == [30]  # never retried
    (dead,) = h.engine.dead_letters()
    assert dead["status"] == "dead" and dead["lastStatus"] == 400
    assert "bad payload" in dead["lastError"]
    assert h.engine.alerts()[0]["receivers"][0]["status"] == "dead"
    h.engine.requeue(dead["id"])
    h.run(10, [sig()])
    assert len(recorder.received) == 2
    assert recorder.received[1].body == recorder.received[0].body
    assert h.engine.dead_letters() == []
    assert h.engine.alerts()[0]["receivers"][0]["status"] == "delivered"
    h.close()


def test_retries_stop_at_max_attempts_and_go_to_dead_letters(store, clock, recorder):
    h = _harness(store, clock, [webhook(recorder)], retry_initial_s=1, retry_max_s=1,
                 retry_max_attempts=3)  # fmt: skip
    recorder.script.extend([Reply(500), Reply(502), Reply(503), Reply(200)])
    h.step([sig()])
    h.run(60, [sig()])
    assert len(recorder.received) == 3
    (dead,) = h.engine.dead_letters()
    assert dead["attempts"] == 3 and "gave up after 3 attempts" in dead["lastError"]
    h.close()


def _secret(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


@pytest.mark.parametrize("which", [0, 1], ids=["old secret verifies", "new secret verifies"])
def test_signature_verifies_with_either_rotated_secret(store, clock, recorder, which):
    keys = [b"old-key-0123456789abcdef", b"new-key-0123456789abcdef"]
    env = {"HOOK_SECRET": f"{_secret(keys[0])} {_secret(keys[1])}"}
    h = _harness(store, clock, [webhook(recorder, secret_env="HOOK_SECRET")], env=env)
    h.step([sig()])
    h.run(30, [sig()])
    (got,) = recorder.received
    assert len(got.headers["webhook-signature"].split()) == 2
    assert int(got.headers["webhook-timestamp"]) == int(got.at)
    msg_id = signing.verify(got.body, got.headers, [keys[which]], now=clock.now())
    assert msg_id == got.headers["webhook-id"]
    with pytest.raises(SignatureError, match="no signature matches"):
        signing.verify(got.body, got.headers, [b"someone-else"], now=clock.now())
    for skew in (3600, -3600):  # a replay later, or a timestamp from the future
        with pytest.raises(SignatureError, match="tolerance"):
            signing.verify(got.body, got.headers, [keys[which]], now=clock.now() + skew)
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in got.headers.items() if k != header}
        with pytest.raises(SignatureError, match="missing"):
            signing.verify(got.body, partial, [keys[which]], now=clock.now())
    # the id is signed too: the same body and signature under another id do not verify
    other = {**got.headers, "webhook-id": "msg_other"}
    with pytest.raises(SignatureError, match="no signature matches"):
        signing.verify(got.body, other, [keys[which]], now=clock.now())
    tampered = got.body.replace(b"firing", b"resolved")
    with pytest.raises(SignatureError):
        signing.verify(tampered, got.headers, [keys[which]], now=clock.now())
    h.close()


def test_missing_secret_variable_is_a_dead_letter_naming_it(store, clock, recorder):
    h = _harness(store, clock, [webhook(recorder, secret_env="NOT_SET_ANYWHERE")], env={})
    h.step([sig()])
    h.run(30, [sig()])
    assert recorder.received == []
    (dead,) = h.engine.dead_letters()
    assert "NOT_SET_ANYWHERE" in dead["lastError"]
    h.close()


def test_restart_mid_firing_does_not_page_again_and_delivers_the_resolve(store, clock, recorder):
    h = _harness(store, clock, [webhook(recorder)])
    t0 = clock.now()
    h.step([sig()])
    h.run(60, [sig()])
    assert [round(r.at - t0) for r in recorder.received] == [30]
    engine = h.restart()
    (alert,) = engine.alerts()
    assert (
        alert["state"] == "firing"
        and alert["startsAt"] == recorder.received[0].json["alerts"][0]["startsAt"]
    )
    h.run(3600, [sig()], every=60)
    assert len(recorder.received) == 1  # no second page
    h.run(10, [sig(active=False)])
    resolved_at = clock.now()
    h.restart()  # and again before the resolve went out
    h.run(600, [])
    assert len(recorder.received) == 2
    body = recorder.received[1].json
    assert body["status"] == "resolved"
    assert body["alerts"][0]["endsAt"] == _rfc(resolved_at)
    h.close()


def test_restart_with_a_delivery_being_retried_still_delivers_it_once(store, clock, recorder):
    env = {"HOOK_SECRET": _secret(b"k" * 24)}  # signed: the message id is in the headers
    h = _harness(store, clock, [webhook(recorder, secret_env="HOOK_SECRET")],
                 retry_initial_s=30, env=env)  # fmt: skip
    recorder.script.append(Reply(503))
    h.step([sig()])
    h.run(30, [sig()])
    h.restart()
    h.run(600, [sig()])
    assert len(recorder.received) == 2
    first, second = recorder.received
    # the saved delivery retried (same message id), not a fresh notification
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert first.body == second.body
    h.close()


class FlakyStore:
    """The test store, with writes failing while ``down`` (as when ClickHouse is away)."""

    def __init__(self, inner):  # type: ignore[no-untyped-def]
        self.inner, self.down = inner, False
        self.driver, self.database = inner.driver, inner.database

    def insert_rows(self, *a, **kw):  # type: ignore[no-untyped-def]
        if self.down:
            raise StoreUnavailable("connection refused")
        return self.inner.insert_rows(*a, **kw)

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_store_outage_loses_no_state_and_notifications_still_go_out(store, clock, recorder):
    # alert_events has a 400-day TTL (m0001): events at the ManualClock's default 2023
    # start would be dropped by the next merge, so this test runs at today's time.
    clock.set(float(int(time.time())))
    flaky = FlakyStore(store)
    h = _harness(flaky, clock, [webhook(recorder)])
    flaky.down = True
    h.step([sig()])
    h.run(30, [sig()])
    assert len(recorder.received) == 1
    assert h.engine.health()["buffered_writes"] > 0
    flaky.down = False
    h.run(10, [sig()])
    assert h.engine.health()["buffered_writes"] == 0
    events = store.query("SELECT state FROM alert_events ORDER BY ts").rows
    assert events == [("firing",)]
    h.restart()
    h.run(600, [sig()])
    assert len(recorder.received) == 1  # the buffered nflog reached the store: no re-page
    h.close()


def _rfc(ts: float) -> str:
    from alerts.model import rfc3339

    return rfc3339(ts)


def test_silences_and_dead_letters_survive_a_restart(store, clock, recorder):
    h = _harness(store, clock, [webhook(recorder)])
    recorder.script.append(Reply(400))
    h.step([sig(pool="a")])
    h.run(30, [sig(pool="a")])
    silence = h.engine.create_silence(
        {"matchers": [{"name": "pool", "value": "b"}], "endsAt": clock.now() + 3600}
    )
    engine = h.restart()
    assert [s["id"] for s in engine.list_silences()] == [silence["id"]]
    (dead,) = engine.dead_letters()
    assert dead["lastStatus"] == 400
    h.run(600, [sig(pool="a"), sig(pool="b")])
    assert len(recorder.received) == 1  # b is silenced, a was already notified (dead)
    engine.requeue(dead["id"])
    h.run(10, [sig(pool="a"), sig(pool="b")])
    assert len(recorder.received) == 2
    h.close()


def test_a_failed_notification_is_superseded_by_the_groups_newer_one(store, clock, recorder):
    h = _harness(store, clock, [webhook(recorder)])
    recorder.script.append(Reply(429, {"Retry-After": "1000"}))
    t0 = clock.now()
    h.step([sig()])
    h.run(60, [sig()])
    h.run(1500, [sig(active=False)])  # resolves at t0+70, group flushes at t0+330
    assert [round(r.at - t0) for r in recorder.received] == [30, 330]
    assert recorder.received[1].json["status"] == "resolved"  # the stale "firing" never follows
    statuses = dict(store.query(
        "SELECT status, count() FROM (SELECT * FROM alert_deliveries ORDER BY id, version DESC "
        "LIMIT 1 BY id) GROUP BY status"
    ).rows)  # fmt: skip
    assert statuses == {"superseded": 1, "delivered": 1}
    h.close()


def test_process_tick_and_reads_from_several_threads_stay_consistent(store, clock, recorder):
    import threading

    clock.set(float(int(time.time())))  # alert_events TTL: see the outage test
    h = _harness(store, clock, [webhook(recorder)])
    signals = [sig(pool=p) for p in ("a", "b", "c")]
    done, errors = threading.Event(), []

    def evaluate():  # type: ignore[no-untyped-def]
        try:
            for _ in range(120):
                h.engine.process(signals, clock.advance(1))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            done.set()

    rounds = [0]

    def deliver_and_read():  # type: ignore[no-untyped-def]
        try:
            while True:  # at least once, and until the evaluating thread is done
                h.engine.tick(clock.now())
                h.engine.alerts()
                rounds[0] += 1
                if done.is_set():
                    break
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=evaluate), threading.Thread(target=deliver_and_read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), f"{t.name} still running after 120 s"
    h.engine.tick(clock.now())
    assert errors == [] and rounds[0] >= 1
    assert len(recorder.received) == 1 and len(recorder.received[0].json["alerts"]) == 3
    assert h.engine.flush_writes()
    rows = store.query("SELECT state, count() FROM alert_events GROUP BY state").rows
    assert rows == [("firing", 3)]
    h.close()


def test_rows_the_store_rejects_are_dropped_without_blocking_later_writes(store, clock, recorder):
    from controlplane.errors import QueryError

    class RejectingStore(FlakyStore):
        def insert_rows(self, table, *a, **kw):  # type: ignore[no-untyped-def]
            if table == "alert_events" and self.down:
                raise QueryError("Cannot parse input")
            return self.inner.insert_rows(table, *a, **kw)

    rejecting = RejectingStore(store)
    rejecting.down = True
    h = _harness(rejecting, clock, [webhook(recorder)])
    h.step([sig()])
    assert h.engine.health()["buffered_writes"] == 0  # not retried forever
    rejecting.down = False
    h.run(30, [sig()])
    assert len(recorder.received) == 1
    h.restart()
    h.run(600, [sig()])
    assert len(recorder.received) == 1  # alert state and the log were written
    h.close()
