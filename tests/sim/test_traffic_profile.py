"""The fitted traffic profile: shipped data, regenerated from the traces, and what the
generator produces from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controlplane.sim.errors import ProfileError
from controlplane.sim.profile import (
    DEFAULT_PROFILE,
    fit_profile,
    load_profile,
    profile_arrivals,
)
from controlplane.sim.traffic import Arrival, Mix, read_azure_csv
from tests.conftest import trace_file


@pytest.mark.parametrize("kind", ["conv", "code"])
def test_shipped_profile_is_what_the_fitting_script_derives_from_the_trace(kind):
    trace = read_azure_csv(trace_file(f"azure_llm_2023_{kind}.csv"))
    fitted = fit_profile(kind, trace.rows, source=f"azure_llm_2023_{kind}.csv")
    assert load_profile(kind) == fitted


@pytest.mark.parametrize("kind", ["conv", "code"])
def test_generated_hour_has_the_fitted_statistics(kind):
    prof = load_profile(kind)
    out = list(profile_arrivals(prof, 3600, seed=11))
    gen = fit_profile(kind, [Arrival(a.t_offset_s, a.input_tokens, a.output_tokens) for a in out])
    assert gen.mean_rps == pytest.approx(prof.mean_rps, rel=0.08)
    assert gen.per_minute_cv == pytest.approx(prof.per_minute_cv, rel=0.3)
    assert gen.mean_input_tokens == pytest.approx(prof.mean_input_tokens, rel=0.08)
    assert gen.mean_output_tokens == pytest.approx(prof.mean_output_tokens, rel=0.15)
    for q in (10, 50, 90):
        assert gen.input_quantiles[q] == pytest.approx(prof.input_quantiles[q], rel=0.1)
        assert gen.output_quantiles[q] == pytest.approx(prof.output_quantiles[q], rel=0.1)
    assert gen.token_rank_corr == pytest.approx(prof.token_rank_corr, abs=0.05)
    # Sub-minute burstiness: the code trace is far burstier than Poisson, conv is not.
    assert gen.second_cv2 == pytest.approx(prof.second_cv2, abs=0.3 * prof.second_cv2 + 0.02)


def test_per_minute_shape_is_replayed():
    prof = load_profile("conv")
    out = list(profile_arrivals(prof, 3600, seed=2))
    counts = np.bincount([int(a.t_offset_s // 60) for a in out], minlength=60)[:58]
    expected = np.asarray(prof.per_minute_counts[:58], dtype=float)
    assert np.corrcoef(counts, expected)[0, 1] > 0.8


def test_rate_multiplier_compression_and_mix():
    prof = load_profile("conv")
    base = list(profile_arrivals(prof, 600, seed=1))
    double = list(profile_arrivals(prof, 600, seed=1, rate_multiplier=2.0))
    assert len(double) == pytest.approx(2 * len(base), rel=0.08)
    fast = list(
        profile_arrivals(prof, 600, seed=1, time_compression=4.0, mix=Mix.parse("a:1,b:1:1"))
    )
    assert max(a.t_offset_s for a in fast) < 150.0
    assert {a.tenant for a in fast} == {"a", "b"}
    assert list(profile_arrivals(prof, 600, seed=1)) == base  # same seed, same traffic


def test_profile_file_is_small_and_holds_statistics_only():
    assert DEFAULT_PROFILE.stat().st_size < 20_000
    doc = json.loads(DEFAULT_PROFILE.read_text())
    assert set(doc["profiles"]) == {"conv", "code"}
    assert "Splitwise" in doc["note"]


def test_profile_errors_name_the_problem(tmp_path):
    with pytest.raises(ProfileError, match="no kind 'chat'"):
        load_profile("chat")
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        load_profile("conv", bad)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile("conv", tmp_path / "missing.json")
    with pytest.raises(ProfileError, match="at least 100"):
        fit_profile("x", [Arrival(0.0, 1, 1)])
