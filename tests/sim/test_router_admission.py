"""Admission token buckets and least-outstanding balancing: pure logic on a manual clock."""

from __future__ import annotations

import pytest

from controlplane.clock import ManualClock
from controlplane.errors import ConfigError
from controlplane.sim.admission import Admission, Limit, parse_limits
from controlplane.sim.balancer import DRAINED, DRAINING, SERVING, Balancer, UnknownBackend


def admit_all(adm: Admission, tenant: str, priority: str, tokens: int, n: int) -> int:
    return sum(adm.check(tenant, priority, tokens).allowed for _ in range(n))


@pytest.mark.parametrize(
    ("limits", "tenant", "priority", "tokens", "tries", "admitted"),
    [
        pytest.param([], "a", "0", 100, 50, 50, id="no limits admit everything"),
        pytest.param(
            [Limit(requests_per_s=5)], "a", "0", 1, 20, 5,
            id="a request rate admits one burst of rate x burst_s",
        ),
        pytest.param(
            [Limit(requests_per_s=5, burst_s=2)], "a", "0", 1, 20, 10,
            id="a longer burst admits more at once",
        ),
        pytest.param(
            [Limit(tokens_per_s=1000)], "a", "0", 300, 10, 3,
            id="a token rate admits requests while their tokens fit the bucket",
        ),
        pytest.param(
            [Limit(tenant="b", requests_per_s=1)], "a", "0", 1, 10, 10,
            id="a limit on another tenant does not apply",
        ),
        pytest.param(
            [Limit(priority="1", requests_per_s=1)], "a", "1", 1, 10, 1,
            id="a limit on a priority applies to every tenant at that priority",
        ),
        pytest.param(
            [Limit(requests_per_s=100), Limit(tenant="a", requests_per_s=2)], "a", "0", 1, 10, 2,
            id="the tightest of several matching limits wins",
        ),
        pytest.param(
            [Limit(tokens_per_s=100)], "a", "0", 5000, 3, 1,
            id="a request larger than the bucket passes once when the bucket is full",
        ),
    ],
)  # fmt: skip
def test_admission_admits_up_to_the_bucket(limits, tenant, priority, tokens, tries, admitted):
    adm = Admission(limits, clock=ManualClock())
    assert admit_all(adm, tenant, priority, tokens, tries) == admitted


def test_refused_request_says_when_to_retry_and_that_time_is_enough():
    clock = ManualClock()
    adm = Admission([Limit(tenant="a", requests_per_s=2, burst_s=1)], clock=clock)
    assert admit_all(adm, "a", "0", 1, 2) == 2
    refused = adm.check("a", "0", 1)
    assert not refused.allowed
    assert refused.limited_by == ("a", "*")
    assert refused.retry_after_s == pytest.approx(0.5)
    assert refused.retry_after_header == "1"  # whole seconds, rounded up
    clock.advance(refused.retry_after_s)
    assert adm.check("a", "0", 1).allowed


def test_a_refused_request_debits_no_bucket():
    clock = ManualClock()
    adm = Admission(
        [Limit(priority="0", requests_per_s=10), Limit(tenant="a", requests_per_s=1)], clock=clock
    )
    assert adm.check("a", "0", 1).allowed
    for _ in range(5):
        assert not adm.check("a", "0", 1).allowed  # refused by the tenant limit
    # The shared priority bucket was not charged for the refusals: 9 left for others.
    assert admit_all(adm, "b", "0", 1, 20) == 9


def test_tokens_refill_at_the_rate_and_never_beyond_capacity():
    clock = ManualClock()
    adm = Admission([Limit(tokens_per_s=100, burst_s=1)], clock=clock)
    assert adm.check("a", "0", 100).allowed
    clock.advance(10.0)  # would be 1000 tokens without the cap
    assert adm.check("a", "0", 100).allowed
    assert not adm.check("a", "0", 50).allowed


def test_replacing_limits_keeps_the_level_of_unchanged_ones():
    clock = ManualClock()
    keep = Limit(tenant="a", requests_per_s=1)
    adm = Admission([keep], clock=clock)
    assert adm.check("a", "0", 1).allowed
    adm.set_limits([keep, Limit(tenant="b", requests_per_s=1)])
    assert not adm.check("a", "0", 1).allowed  # still empty, not refilled by the update
    adm.set_limits([])
    assert adm.check("a", "0", 1).allowed


def test_parse_limits_reports_every_problem_with_its_position():
    with pytest.raises(ConfigError) as err:
        parse_limits(
            [
                {"tenant": "a", "requests_per_s": -1},
                {"tenant": "", "tokens_per_s": 5},
                {"tenant": "b", "rps": 3},
                {"tenant": "c", "requests_per_s": 1},
                {"tenant": "c", "requests_per_s": 2},
            ]
        )
    text = str(err.value)
    assert "[0].requests_per_s: expected a number > 0 (got -1)" in text
    assert "[1].tenant: expected a non-empty string" in text
    assert "[2]: unknown fields: rps" in text
    assert "[4]: duplicate limit for tenant=c priority=*" in text
    assert len(err.value.problems) == 4


def test_parse_limits_builds_limits():
    [lim] = parse_limits([{"tenant": "a", "priority": "1", "tokens_per_s": 500, "burst_s": 2}])
    assert lim == Limit("a", "1", None, 500.0, 2.0)


# -- balancer -----------------------------------------------------------------------------


def test_least_outstanding_picks_the_idlest_and_rotates_ties():
    b = Balancer()
    for name in ("r0", "r1", "r2"):
        b.add(name, f"http://{name}")
    picks = [b.acquire().name for _ in range(3)]
    assert sorted(picks) == ["r0", "r1", "r2"]  # ties rotate: one each
    b.release(b.get("r1"))
    assert b.acquire().name == "r1"  # the only one with fewer in flight
    # Ties with nothing in flight: each request released before the next, so the
    # least-outstanding rule alone would pick r0 every time; the tie-break rotates.
    idle = Balancer()
    for name in ("r0", "r1", "r2"):
        idle.add(name, f"http://{name}")
    rotated = []
    for _ in range(4):
        backend = idle.acquire()
        rotated.append(backend.name)
        idle.release(backend)
    assert rotated == ["r0", "r1", "r2", "r0"]


def test_draining_backend_gets_no_new_requests_and_is_drained_when_idle():
    b = Balancer()
    b.add("r0", "http://r0")
    b.add("r1", "http://r1")
    held = b.acquire(frozenset({"r1"}))
    assert held.name == "r0"
    b.drain("r0")
    assert b.get("r0").state == DRAINING
    assert {b.acquire().name for _ in range(3)} == {"r1"}
    b.release(held)
    assert b.get("r0").state == DRAINED
    assert b.get("r0").drained.is_set()
    b.undrain("r0")
    assert b.get("r0").state == SERVING


def test_no_serving_backend_gives_none_and_unknown_names_raise():
    b = Balancer()
    assert b.acquire() is None
    b.add("r0", "http://r0")
    b.drain("r0")
    assert b.get("r0").state == DRAINED  # nothing in flight: drained at once
    assert b.acquire() is None
    with pytest.raises(UnknownBackend, match="no replica named 'nope'"):
        b.drain("nope")
