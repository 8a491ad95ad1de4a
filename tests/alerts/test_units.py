"""Pure pieces: fingerprints, lifecycle, dedup decisions, silences, Retry-After, secrets."""

from __future__ import annotations

import random

import httpx
import pytest

from alerts import signing
from alerts.delivery import RetryPolicy, parse_retry_after, send
from alerts.delivery_model import Delivery
from alerts.errors import InvalidInput, PermanentDelivery, RetryableDelivery
from alerts.lifecycle import RESOLVED_RETENTION_S, step
from alerts.model import FIRING, PENDING, RESOLVED, fingerprint, rfc3339
from alerts.nflog import NflogEntry, needs_update
from alerts.routing import compile_routes, routes_for
from alerts.signals import AlertSignal
from alerts.silences import parse_silence
from controlplane.config import AlertRoute, Receiver

LABELS = {"alertname": "SLOBurnRateHigh", "pool": "chat-8b", "severity": "page",
          "slo": "chat-ttft"}  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        # Delivered by the real Alertmanager 0.25 for these labels (test_real_alertmanager).
        (LABELS, "d341692a219cc6cf"),
        # prometheus/common: the empty label set hashes to the FNV-64a offset basis.
        ({}, "cbf29ce484222325"),
    ],
    ids=["matches what Alertmanager computed", "empty label set"],
)
def test_fingerprint_is_alertmanagers(labels, expected):
    assert fingerprint(labels) == expected
    assert fingerprint(dict(reversed(list(labels.items())))) == expected


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (1700000000.0, "2023-11-14T22:13:20Z"),
        (1700000000.25, "2023-11-14T22:13:20.25Z"),
        (None, "0001-01-01T00:00:00Z"),
    ],  # fmt: skip
    ids=["whole seconds have no fraction", "fractions drop trailing zeros", "zero time"],
)
def test_times_are_go_rfc3339nano(ts, text):
    assert rfc3339(ts) == text


def _sig(active: bool, for_s: float = 0, keep: float = 0) -> AlertSignal:
    return AlertSignal(labels={"alertname": "A"}, active=active, for_s=for_s,
                       keep_firing_for_s=keep)  # fmt: skip


def _run(seq, valid=40.0):  # type: ignore[no-untyped-def]
    """Feed (time, signal) pairs; return the (state, transition) after each."""
    alert, out = None, []
    for t, s in seq:
        alert, tr = step(alert, s, t, valid_for_s=valid)
        out.append((alert.state if alert else None, tr))
    return out, alert


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        ([(0, _sig(True))], [(FIRING, FIRING)]),
        (
            [(0, _sig(True, 30)), (20, _sig(True, 30)), (30, _sig(True, 30))],
            [(PENDING, PENDING), (PENDING, None), (FIRING, FIRING)],
        ),
        ([(0, _sig(True, 30)), (20, _sig(False, 30))], [(PENDING, PENDING), (None, None)]),
        ([(0, _sig(True)), (10, _sig(False))], [(FIRING, FIRING), (RESOLVED, RESOLVED)]),
        ([(0, _sig(True)), (10, None)], [(FIRING, FIRING), (RESOLVED, RESOLVED)]),
        (
            [(0, _sig(True, keep=60)), (10, _sig(False, keep=60)), (70, _sig(False, keep=60))],
            [(FIRING, FIRING), (FIRING, None), (RESOLVED, RESOLVED)],
        ),
        (
            [(0, _sig(True)), (10, _sig(False)), (20, _sig(True))],
            [(FIRING, FIRING), (RESOLVED, RESOLVED), (FIRING, FIRING)],
        ),
        (
            [(0, _sig(True)), (10, None), (10 + RESOLVED_RETENTION_S, None)],
            [(FIRING, FIRING), (RESOLVED, RESOLVED), (None, None)],
        ),
    ],  # fmt: skip
    ids=[
        "without for an active alert fires at once",
        "with for it is pending until for has elapsed",
        "a pending alert that clears is dropped without a resolve",
        "a firing alert that clears resolves",
        "a firing alert missing from the evaluation resolves",
        "keep_firing_for holds it firing after the condition clears",
        "an alert that comes back after resolving fires anew",
        "resolved alerts are forgotten after 15 minutes",
    ],
)
def test_lifecycle(seq, expected):
    got, _ = _run(seq)
    assert got == expected


def test_ends_at_is_eval_time_plus_validity_then_resolve_time():
    _, a = _run([(0, _sig(True))], valid=40)
    assert a.ends_at() == 40 and a.starts_at() == 0
    _, a = _run([(0, _sig(True)), (10, _sig(True)), (20, _sig(False))])
    assert a.ends_at() == 20 and a.starts_at() == 0


def _entry(firing, resolved=(), at=0.0):  # type: ignore[no-untyped-def]
    return NflogEntry("r", "g", at, frozenset(firing), frozenset(resolved))


@pytest.mark.parametrize(
    ("entry", "firing", "resolved", "send_resolved", "now", "expected"),
    [
        (None, {"a"}, set(), True, 0, True),
        (None, set(), {"a"}, True, 0, False),
        (_entry({"a"}), {"a", "b"}, set(), True, 10, True),
        (_entry({"a", "b"}), {"a"}, {"b"}, True, 10, True),
        (_entry({"a", "b"}), {"a"}, {"b"}, False, 10, False),
        (_entry({"a"}), set(), {"a"}, False, 10, True),
        (_entry(set(), {"a"}), set(), {"a"}, True, 10, False),
        (_entry({"a"}), {"a"}, set(), True, 3599, False),
        (_entry({"a"}), {"a"}, set(), True, 3600, True),
    ],  # fmt: skip
    ids=[
        "first notification of a firing group",
        "never notified and only resolved: nothing to say",
        "a new firing alert is news",
        "a resolved alert is news with send_resolved",
        "a resolved alert is not news without send_resolved",
        "all resolved clears the log even without send_resolved",
        "already told everything resolved",
        "unchanged before repeat_interval",
        "unchanged at repeat_interval repeats",
    ],
)
def test_needs_update_follows_alertmanager(entry, firing, resolved, send_resolved, now, expected):
    assert needs_update(entry, firing, resolved, send_resolved=send_resolved,
                        repeat_interval_s=3600, now=now) is expected  # fmt: skip


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"endsAt": 2e9}, "matchers: expected a non-empty list"),
        ({"matchers": [{"name": "slo", "value": "x"}]}, "endsAt: required"),
        ({"matchers": [{"name": "9x", "value": "x"}], "endsAt": 2e9}, "matchers[0].name"),
        (
            {"matchers": [{"name": "a", "value": "(", "isRegex": True}], "endsAt": 2e9},
            "invalid regular expression",
        ),
        (
            {"matchers": [{"name": "a", "value": ".*", "isRegex": True}], "endsAt": 2e9},
            "must not match the empty label set",
        ),
        ({"matchers": [{"name": "a", "value": "b"}], "endsAt": "yesterday"}, "endsAt: expected"),
        (
            {"matchers": [{"name": "a", "value": "b"}], "startsAt": 1.8e9, "endsAt": 1.75e9},
            "endsAt: must be after startsAt",
        ),
        (
            {"matchers": [{"name": "a", "value": "b"}], "startsAt": 1.5e9, "endsAt": 1.6e9},
            "in the future",
        ),
    ],  # fmt: skip
    ids=[
        "no matchers",
        "no end",
        "bad label name",
        "bad regex",
        "matches everything",
        "unparseable time",
        "ends before it starts",
        "already over",
    ],  # fmt: skip
)
def test_bad_silences_are_refused_naming_the_field(body, problem):
    with pytest.raises(InvalidInput) as exc:
        parse_silence(body, now=1.7e9)
    assert problem in str(exc.value)


def test_silence_matchers_and_states():
    s = parse_silence({"matchers": [{"name": "slo", "value": "chat-.*", "isRegex": True},
                                    {"name": "severity", "value": "ticket", "isEqual": False}],
                       "startsAt": "2023-11-14T22:13:20Z", "endsAt": 1.7e9 + 60},
                      now=1.7e9 - 10)  # fmt: skip
    assert s.state(1.7e9 - 5) == "pending" and s.state(1.7e9) == "active"
    assert s.mutes({"slo": "chat-ttft", "severity": "page"}, 1.7e9)
    assert not s.mutes({"slo": "chat-ttft", "severity": "ticket"}, 1.7e9)
    assert not s.mutes({"slo": "code-ttft", "severity": "page"}, 1.7e9)
    assert not s.mutes({"slo": "chat-ttft", "severity": "page"}, 1.7e9 + 60)
    assert s.expire(1.7e9 + 1).state(1.7e9 + 1) == "expired"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("30", 30.0), ("Tue, 14 Nov 2023 22:14:20 GMT", 60.0), ("soon", None), (None, None)],
    ids=["delta seconds", "HTTP date", "garbage is ignored", "absent"],
)
def test_retry_after(header, expected):
    assert parse_retry_after(header, now=1700000000.0) == expected


def test_backoff_is_full_jitter_capped():
    p = RetryPolicy(initial_s=1, max_s=10)
    rng = random.Random(1)
    delays = [p.backoff(n, rng) for n in range(1, 10)]
    check = random.Random(1)
    assert delays == [check.uniform(0, min(10, 2 ** (n - 1))) for n in range(1, 10)]
    assert all(0 <= d <= 10 for d in delays)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("", "no signing secret"), ("whsec_!!notbase64", "must be base64")],
    ids=["empty", "whsec_ secret that is not base64"],
)
def test_bad_secrets_are_refused(value, problem):
    with pytest.raises(InvalidInput, match=problem):
        signing.parse_secrets(value)


def test_standard_webhooks_reference_vector():
    # Test vector of the Standard Webhooks reference libraries.
    key = signing.parse_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    sig = signing.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, key)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _delivery() -> Delivery:
    return Delivery(id="msg_1", receiver="r", kind="webhook", group_key="g",
                    url="http://127.0.0.1:9/x", body="{}")  # fmt: skip


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (lambda req: httpx.Response(503), RetryableDelivery),
        (lambda req: httpx.Response(408), RetryableDelivery),
        (lambda req: httpx.Response(429), RetryableDelivery),
        (lambda req: httpx.Response(404), PermanentDelivery),
        (lambda req: (_ for _ in ()).throw(httpx.ConnectError("refused")), RetryableDelivery),
        (lambda req: (_ for _ in ()).throw(httpx.ReadTimeout("slow")), RetryableDelivery),
        (lambda req: (_ for _ in ()).throw(httpx.TooManyRedirects("loop")), PermanentDelivery),
    ],
    ids=[
        "503 retried",
        "408 retried",
        "429 retried",
        "404 not retried",
        "connection refused retried",
        "timeout retried",
        "other httpx errors not retried",
    ],
)
def test_send_maps_every_outcome_to_alerting_errors(handler, error):
    http = httpx.Client(transport=httpx.MockTransport(handler))
    r = Receiver(name="r", kind="webhook", url="http://127.0.0.1:9/x")
    with pytest.raises(error) as exc:
        send(http, _delivery(), r, {}, now=0)
    assert exc.value.__cause__ is None or isinstance(exc.value.__cause__, httpx.HTTPError)
    http.close()


def test_first_non_continue_route_ends_matching():
    routes = compile_routes([
        AlertRoute(receiver="a", match={"severity": "page"}),
        AlertRoute(receiver="b"),
    ])  # fmt: skip
    assert [r.receiver for r in routes_for(routes, {"severity": "page"})] == ["a"]
    assert [r.receiver for r in routes_for(routes, {"severity": "ticket"})] == ["b"]
    assert routes[0].group_key({"alertname": "X", "slo": "s", "pool": "p"}) == (
        '{}/{severity="page"}:{alertname="X", slo="s"}'
    )
