"""Budget maths with exact expected values, tier rescaling, and tier suppression."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.slo.burn import (
    Counts,
    TierState,
    budget_remaining,
    burn_rate,
    suppress_slower,
    tier_states,
    time_to_exhaustion,
)
from controlplane.slo.windows import (
    DAY,
    HOUR,
    MINUTE,
    Tier,
    Window,
    default_tiers,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("good", "total", "objective", "burn", "remaining"),
    [
        (999, 1000, 0.999, 1.0, 0.0),
        (9990, 10000, 0.99, 0.1, 0.9),
        (856, 1000, 0.99, 14.4, -13.4),
        (1000, 1000, 0.995, 0.0, 1.0),
        (0, 50, 0.9, 10.0, -9.0),
        (0, 0, 0.99, None, None),
    ],
    ids=[
        "spending exactly the budget",
        "a tenth of the budget",
        "the fast page threshold",
        "no errors",
        "every request bad",
        "no events is not computable",
    ],
)
def test_burn_rate_and_budget(good, total, objective, burn, remaining) -> None:
    c = Counts(good, total)
    if burn is None:
        assert burn_rate(c, objective) is None and budget_remaining(c, objective) is None
    else:
        assert burn_rate(c, objective) == pytest.approx(burn, abs=1e-9)
        assert budget_remaining(c, objective) == pytest.approx(remaining, abs=1e-9)


@pytest.mark.parametrize(
    ("remaining", "burn", "window_s", "expected"),
    [
        (0.5, 1.0, 30 * DAY, 15 * DAY),
        (1.0, 14.4, 30 * DAY, 30 * DAY / 14.4),
        (0.2, 2.0, 28 * DAY, 0.2 * 28 * DAY / 2),
        (-0.1, 3.0, 30 * DAY, 0.0),
        (0.5, 0.0, 30 * DAY, None),
        (None, 5.0, 30 * DAY, None),
    ],
    ids=[
        "half the budget at burn 1",
        "a full budget at the page rate",
        "a fifth at twice the rate",
        "already overspent",
        "no burn never exhausts",
        "unknown budget",
    ],
)
def test_time_to_exhaustion(remaining, burn, window_s, expected) -> None:
    got = time_to_exhaustion(remaining, burn, window_s)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("window_s", "expected"),
    [
        (30 * DAY, [("1h", "5m", 14.4), ("6h", "30m", 6.0), ("3d", "6h", 1.0)]),
        (28 * DAY, [("56m", "5m", 14.4), ("5h36m", "28m", 6.0), ("2d19h12m", "5h36m", 1.0)]),
        (7 * DAY, [("14m", "1m", 14.4), ("1h24m", "7m", 6.0), ("16h48m", "1h24m", 1.0)]),
        (90 * DAY, [("3h", "15m", 14.4), ("18h", "1h30m", 6.0), ("9d", "18h", 1.0)]),
        # 1 day: 1h x 1/30 = 2 min; factor keeps 2% of the budget: 0.02 x 1440 / 2 = 14.4
        (DAY, [("2m", "1m", 14.4), ("12m", "1m", 6.0), ("2h24m", "12m", 1.0)]),
        # 10 days: 5m x 1/3 rounds to 2m; 1h x 1/3 = 20m exactly
        (10 * DAY, [("20m", "2m", 14.4), ("2h", "10m", 6.0), ("1d", "2h", 1.0)]),
    ],
    ids=["30 days is the workbook table", "28 days", "a week", "a quarter", "one day", "ten days"],
)
def test_default_tiers_rescale_windows_and_keep_budget_fractions(window_s, expected) -> None:
    tiers = default_tiers(window_s)
    got = [(format_duration(t.long_s), format_duration(t.short_s), t.factor) for t in tiers]
    assert got == expected
    for t, frac in zip(tiers, (0.02, 0.05, 0.10), strict=True):
        # burning at the factor for the long window spends the template's budget share
        assert t.factor * t.long_s / window_s == pytest.approx(frac)


def test_rounding_a_long_window_recomputes_the_factor() -> None:
    # 45 days: 6h x 1.5 = 9h exactly but 1h x 1.5 = 90m; 3d x 1.5 = 4d12h
    tiers = default_tiers(45 * DAY)
    assert [(t.long_s, t.factor) for t in tiers] == [
        (90 * MINUTE, 14.4),
        (9 * HOUR, 6.0),
        (108 * HOUR, 1.0),
    ]
    # 29 days: 1h x 29/30 = 58m: factor = 0.02 x 29d / 58m = 14.4 still (exact scale)
    # 31 days: 5m x 31/30 = 5.17m -> 5m (short windows do not change factors)
    assert [format_duration(t.short_s) for t in default_tiers(31 * DAY)] == ["5m", "31m", "6h12m"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("28d", 28 * DAY), ("1w", 7 * DAY), ("90s", 90)],
)
def test_durations_round_trip(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "5", "m5", "1h1d", "-5m", "5 m"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("calendar", "tz", "until", "start", "length_days"),
    [
        (
            "month",
            "UTC",
            datetime(2026, 2, 10, 12, tzinfo=UTC),
            datetime(2026, 2, 1, tzinfo=UTC),
            28,
        ),
        (
            "month",
            "Europe/Paris",
            datetime(2026, 3, 31, 23, 30, tzinfo=UTC),
            datetime(2026, 3, 31, 22, tzinfo=UTC),
            30,
        ),
        (
            "week",
            "UTC",
            datetime(2026, 11, 22, 1, tzinfo=UTC),
            datetime(2026, 11, 16, tzinfo=UTC),
            7,
        ),
    ],
    ids=["February in UTC", "April starts at 00:00 Paris time", "a week starts on Monday"],
)
def test_calendar_window_bounds(calendar, tz, until, start, length_days) -> None:
    got_start, length = Window("calendar", calendar=calendar, tz=tz).bounds(until)
    assert got_start == start
    assert length == length_days * DAY


def _state(long_s: int, active: bool) -> TierState:
    t = Tier(f"t{long_s}", "page", long_s, long_s // 12, 2.0)
    return TierState(t, 5.0 if active else 0.5, 5.0 if active else 0.5, True)


@pytest.mark.parametrize(
    ("actives", "shown"),
    [
        ((True, True, True), [True, False, False]),
        ((False, True, True), [False, True, False]),
        ((False, False, True), [False, False, True]),
        ((True, False, True), [True, False, False]),
        ((False, False, False), [False, False, False]),
    ],
    ids=[
        "all burning: only the fastest",
        "the slow page mutes the ticket",
        "only the ticket",
        "a gap still mutes slower ones",
        "nothing burning",
    ],
)
def test_slower_tiers_are_suppressed_while_a_faster_one_is_active(actives, shown) -> None:
    # given out of order to check that speed, not position, decides
    states = [_state(3 * DAY, actives[2]), _state(HOUR, actives[0]), _state(6 * HOUR, actives[1])]
    assert suppress_slower(states) == [shown[2], shown[0], shown[1]]


def test_a_tier_needs_both_windows_above_the_factor_and_enough_events() -> None:
    tier = Tier("page", "page", HOUR, 5 * MINUTE, 14.4)
    obj = 0.999

    def counts(long_bad: int, short_bad: int, long_total: int = 10000) -> dict[int, Counts]:
        return {HOUR: Counts(long_total - long_bad, long_total),
                5 * MINUTE: Counts(1000 - short_bad, 1000)}  # fmt: skip

    # 1.5% errors = burn 15 over both windows: fires
    assert tier_states((tier,), counts(150, 15), obj, 10)[0].active
    # just under the factor (1.44% errors: 14.399999... in floating point) does not fire
    assert not tier_states((tier,), counts(144, 15), obj, 10)[0].active
    # the short window has recovered: no page (the alert resets quickly)
    assert not tier_states((tier,), counts(150, 1), obj, 10)[0].active
    # too few events in the long window
    assert not tier_states((tier,), counts(3, 15, long_total=5), obj, 10)[0].active


def test_a_burn_of_exactly_the_factor_does_not_fire_and_min_events_is_enough() -> None:
    """The boundaries themselves, with values exact in floating point: objective 0.75
    (budget 0.25), 50% errors = burn 2.0."""
    tier = Tier("t", "page", HOUR, 5 * MINUTE, 2.0)

    def state(long_bad: int, long_total: int, min_events: int) -> TierState:
        c = {HOUR: Counts(long_total - long_bad, long_total), 5 * MINUTE: Counts(0, 10)}
        (st,) = tier_states((tier,), c, 0.75, min_events)
        return st

    assert state(50, 100, 10).long_burn == 2.0
    assert not state(50, 100, 10).active  # burn == factor: not above it
    assert state(51, 100, 10).active
    # exactly min_events events in the long window are enough; one fewer is not
    assert state(51, 100, 100).enough_events and state(51, 100, 100).active
    assert not state(51, 100, 101).enough_events
