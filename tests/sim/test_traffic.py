"""Trace reader, transforms and synthetic patterns."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import pytest

from controlplane.sim.errors import SimError, TraceFormatError
from controlplane.sim.traffic import (
    Arrival,
    Constant,
    Diurnal,
    FlashCrowd,
    Mix,
    OnOff,
    Steps,
    fixed_tokens,
    lognormal_tokens,
    parse_pattern,
    parse_timestamp,
    poisson_arrivals,
    read_azure_csv,
    replay,
)
from tests.conftest import trace_file


@functools.cache
def load(name: str):
    # Parsed once per test session: the tests only read it.
    return read_azure_csv(trace_file(name))


@pytest.mark.parametrize(
    ("name", "rows", "mean_in", "mean_out"),
    [
        pytest.param("azure_llm_2023_conv.csv", 19366, 1155, 211, id="conversation trace"),
        pytest.param("azure_llm_2023_code.csv", 8819, 2048, 28, id="code trace"),
    ],
)
def test_reads_the_real_azure_traces(name, rows, mean_in, mean_out):
    trace = load(name)
    assert len(trace.rows) == rows
    assert trace.rows[0].t_offset_s == 0.0
    offsets = [r.t_offset_s for r in trace.rows]
    assert offsets == sorted(offsets)
    assert 3400 < trace.duration_s < 3600
    assert sum(r.input_tokens for r in trace.rows) / rows == pytest.approx(mean_in, rel=0.01)
    assert sum(r.output_tokens for r in trace.rows) / rows == pytest.approx(mean_out, rel=0.01)


def test_first_conversation_rows_keep_their_values_and_sub_millisecond_offsets():
    trace = load("azure_llm_2023_conv.csv")
    assert trace.start == datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC)
    assert trace.rows[0][1:3] == (374, 44)
    assert trace.rows[1] == Arrival(4.314579, 396, 109)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2023-11-16 18:15:46.6805900", 680590, id="seven fractional digits"),
        pytest.param("2023-11-16 18:15:46.68059", 680590, id="five fractional digits"),
        pytest.param("2023-11-16 18:15:46", 0, id="no fraction"),
        pytest.param("2023-11-16 18:15:46.9999999", 0, id="rounding carries into the second"),
    ],
)
def test_timestamps_parse_to_the_microsecond(text, expected):
    assert parse_timestamp(text).microsecond == expected


GOOD = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        pytest.param("", 1, "empty file", id="an empty file"),
        pytest.param("ts,in,out\n", 1, "header", id="a wrong header"),
        pytest.param(GOOD, 2, "no requests", id="a header alone"),
        pytest.param(GOOD + "2023-11-16 18:15:46.1,5\r\n", 2, "3 columns", id="a short row"),
        pytest.param(
            GOOD + "2023-11-16 18:15:46.1,5,1\r\nyesterday,5,1\r\n",
            3,
            "bad TIMESTAMP",
            id="a bad timestamp on line 3",
        ),
        pytest.param(
            GOOD + "2023-11-16 18:15:46.1,five,1\r\n", 2, "integers", id="non-integer tokens"
        ),
        pytest.param(GOOD + "2023-11-16 18:15:46.1,5,0\r\n", 2, ">= 1", id="zero output tokens"),
    ],
)
def test_malformed_traces_name_the_line_and_the_problem(tmp_path, body, line, message):
    p = tmp_path / "t.csv"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(TraceFormatError, match=message) as exc:
        read_azure_csv(p)
    assert exc.value.line == line
    assert str(p) in str(exc.value)


def test_a_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceFormatError, match="cannot read"):
        read_azure_csv(tmp_path / "nope.csv")


def test_unsorted_rows_are_sorted_and_bom_is_accepted(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "\ufeff" + GOOD + "2023-01-01 00:00:05.0,10,1\n2023-01-01 00:00:01.0,20,2\n",
        encoding="utf-8",
    )
    trace = read_azure_csv(p)
    assert [r[:3] for r in trace.rows] == [(0.0, 20, 2), (4.0, 10, 1)]


def test_slice_rebases_offsets():
    trace = load("azure_llm_2023_conv.csv")
    part = trace.slice(600, 300)
    assert part.rows[0].t_offset_s >= 0 and part.rows[-1].t_offset_s < 300
    full = [r for r in trace.rows if 600 <= r.t_offset_s < 900]
    assert len(part.rows) == len(full)


ROWS = [Arrival(float(t), 100, 10) for t in range(2000)]


@pytest.mark.parametrize("multiplier", [0.5, 1.0, 2.0, 3.5])
def test_rate_multiplier_thins_or_replicates_keeping_order(multiplier):
    out = list(replay(ROWS, rate_multiplier=multiplier, seed=1))
    assert len(out) == pytest.approx(len(ROWS) * multiplier, rel=0.05)
    assert all(a.t_offset_s <= b.t_offset_s for a, b in zip(out, out[1:], strict=False))
    assert out[-1].t_offset_s <= ROWS[-1].t_offset_s


def test_time_compression_shortens_the_timeline_with_the_same_requests():
    out = list(replay(ROWS, time_compression=10.0))
    assert len(out) == len(ROWS)
    assert out[-1].t_offset_s == pytest.approx(199.9)


def test_mix_assigns_tenants_and_priorities_by_weight():
    mix = Mix.parse("chat:3:0,batch:1:2")
    out = list(replay(ROWS, mix=mix, seed=7))
    chat = [a for a in out if a.tenant == "chat"]
    assert len(chat) / len(out) == pytest.approx(0.75, abs=0.03)
    assert {a.priority for a in chat} == {0}
    assert {a.priority for a in out if a.tenant == "batch"} == {2}


@pytest.mark.parametrize(
    "text",
    ["chat", "chat:x", ":1", "chat:1:high"],
)
def test_bad_mixes_are_refused(text):
    with pytest.raises(SimError, match="tenant mix"):
        Mix.parse(text)


@pytest.mark.parametrize(
    ("pattern", "t", "rate"),
    [
        pytest.param(Constant(5), 1234.0, 5.0, id="constant"),
        pytest.param(Steps(((0, 2), (300, 8), (600, 4))), 450.0, 8.0, id="steps"),
        pytest.param(
            Diurnal(10, 0.5, 86400, 14 * 3600),
            14 * 3600.0,
            15.0,
            id="diurnal peaks at its peak hour",
        ),
        pytest.param(
            Diurnal(10, 0.5, 86400, 14 * 3600),
            2 * 3600.0,
            5.0,
            id="diurnal troughs half a period later",
        ),
        pytest.param(FlashCrowd(2, 20, 600, ramp_s=30), 615.0, 11.0, id="flash crowd ramp"),
        pytest.param(
            FlashCrowd(2, 20, 600, ramp_s=30, hold_s=120), 700.0, 20.0, id="flash crowd hold"
        ),
        pytest.param(OnOff(8, 60, 120), 30.0, 8.0, id="on"),
        pytest.param(OnOff(8, 60, 120), 100.0, 0.0, id="off"),
    ],
)
def test_patterns_give_the_rate_at_a_time(pattern, t, rate):
    assert pattern.rate(t) == pytest.approx(rate)
    assert pattern.max_rate >= rate


def test_poisson_arrivals_follow_the_rate_integral():
    out = list(poisson_arrivals(Steps(((0, 2), (600, 10))), 1200, fixed_tokens(100, 10), seed=3))
    first = sum(1 for a in out if a.t_offset_s < 600)
    second = len(out) - first
    assert first == pytest.approx(1200, rel=0.1)
    assert second == pytest.approx(6000, rel=0.05)
    assert [a[1:3] for a in out[:2]] == [(100, 10), (100, 10)]


def test_same_seed_same_arrivals_and_lognormal_means():
    tokens = lognormal_tokens(1155, 0.96, 211, 0.77)
    a = list(poisson_arrivals(Constant(20), 600, tokens, seed=9))
    b = list(poisson_arrivals(Constant(20), 600, tokens, seed=9))
    assert a == b
    assert sum(x.input_tokens for x in a) / len(a) == pytest.approx(1155, rel=0.08)


@pytest.mark.parametrize(
    "text",
    ["constant", "steps:0=a", "wave:3", "onoff:1", "diurnal:x"],
)
def test_bad_patterns_are_refused_with_the_grammar(text):
    with pytest.raises(SimError, match="bad traffic pattern"):
        parse_pattern(text)


def test_patterns_parse_from_the_cli_form():
    assert parse_pattern("constant:5") == Constant(5.0)
    assert parse_pattern("steps:0=2,300=8") == Steps(((0.0, 2.0), (300.0, 8.0)))
    assert parse_pattern("onoff:8:60:120") == OnOff(8.0, 60.0, 120.0)
