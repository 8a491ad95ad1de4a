"""A traffic profile fitted to real traces, shipped as data, so the product can generate
realistic load with no trace file.

Per kind of traffic (``conv``, ``code``) the profile keeps:

- the mean request rate and the per-minute count series (its shape is replayed, scaled);
- sub-minute burstiness as the squared coefficient of variation of a per-second gamma
  rate multiplier (a doubly stochastic Poisson process), fitted from per-second counts;
- input and output token distributions as 101 empirical quantiles, sampled by
  log-linear interpolation, tied by a Gaussian copula with the fitted rank correlation.

``fit_profile`` computes all of it from trace rows; ``scripts/fit_traffic_profile.py``
writes ``profiles/azure_llm_2023.json`` from the trace files given by path.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controlplane.sim.errors import ProfileError, SimError
from controlplane.sim.traffic import Arrival, Mix

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = PROFILE_DIR / "azure_llm_2023.json"
QUANTILE_PROBS = tuple(i / 100 for i in range(101))


@dataclass(frozen=True)
class TrafficProfile:
    kind: str
    source: str
    requests: int
    duration_s: float
    mean_rps: float
    per_minute_counts: tuple[int, ...]
    second_cv2: float
    input_quantiles: tuple[int, ...]
    output_quantiles: tuple[int, ...]
    token_rank_corr: float  # Spearman correlation of input and output tokens
    mean_input_tokens: float
    mean_output_tokens: float

    @property
    def minute_shape(self) -> np.ndarray:
        counts = np.asarray(self.per_minute_counts, dtype=float)
        return np.asarray(counts / counts.mean())

    @property
    def per_minute_cv(self) -> float:
        counts = np.asarray(self.per_minute_counts, dtype=float)
        return float(counts.std() / counts.mean())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_profile(kind: str, rows: Sequence[Arrival], *, source: str = "") -> TrafficProfile:
    """Fit a profile to trace rows (offsets from the first request)."""
    if len(rows) < 100:
        raise ProfileError(f"fitting {kind!r} needs at least 100 requests, got {len(rows)}")
    t = np.asarray([r.t_offset_s for r in rows])
    inp = np.asarray([r.input_tokens for r in rows], dtype=float)
    out = np.asarray([r.output_tokens for r in rows], dtype=float)
    minutes = int(t[-1] // 60) + 1
    per_minute = np.bincount((t // 60).astype(int), minlength=minutes)
    seconds = int(t[-1]) + 1
    per_second = np.bincount(t.astype(int), minlength=seconds)
    # Excess variance of per-second counts over Poisson, relative to the local mean:
    # for counts ~ Poisson(m G) with E[G]=1, Var = m + m^2 cv2.
    excess = 0.0
    norm = 0.0
    for m in range(minutes):
        sec = per_second[m * 60 : (m + 1) * 60].astype(float)
        if sec.size < 2 or sec.mean() <= 0:
            continue
        excess += sec.size * (sec.var() - sec.mean())
        norm += sec.size * sec.mean() ** 2
    cv2 = max(0.0, excess / norm) if norm else 0.0
    return TrafficProfile(
        kind=kind,
        source=source,
        requests=len(rows),
        duration_s=float(t[-1]),
        mean_rps=len(rows) / max(float(t[-1]), 1.0),
        per_minute_counts=tuple(int(c) for c in per_minute),
        second_cv2=round(cv2, 4),
        input_quantiles=tuple(int(round(q)) for q in np.quantile(inp, QUANTILE_PROBS)),
        output_quantiles=tuple(int(round(q)) for q in np.quantile(out, QUANTILE_PROBS)),
        token_rank_corr=round(_spearman(inp, out), 4),
        mean_input_tokens=round(float(inp.mean()), 2),
        mean_output_tokens=round(float(out.mean()), 2),
    )


def dump_profiles(profiles: Sequence[TrafficProfile], path: Path, *, note: str) -> None:
    doc = {"note": note, "profiles": {p.kind: asdict(p) for p in profiles}}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def load_profile(kind: str = "conv", path: Path | str | None = None) -> TrafficProfile:
    p = Path(path) if path is not None else DEFAULT_PROFILE
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read traffic profile {p}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(f"traffic profile {p} is not JSON: {exc}") from exc
    kinds: dict[str, Any] = doc.get("profiles", {}) if isinstance(doc, dict) else {}
    if kind not in kinds:
        raise ProfileError(f"traffic profile {p} has no kind {kind!r}; has {sorted(kinds)}")
    raw = dict(kinds[kind])
    try:
        for key in ("per_minute_counts", "input_quantiles", "output_quantiles"):
            raw[key] = tuple(raw[key])
        prof = TrafficProfile(**raw)
    except (TypeError, KeyError) as exc:
        raise ProfileError(f"traffic profile {p} kind {kind!r} is malformed: {exc}") from exc
    if len(prof.input_quantiles) != len(QUANTILE_PROBS) or not prof.per_minute_counts:
        raise ProfileError(f"traffic profile {p} kind {kind!r}: wrong quantile/series length")
    return prof


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 erf (|error| < 1.5e-7): numpy has no erf and scipy is
    # not a dependency.
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = 1.0 - poly * np.exp(-x * x)
    return np.asarray(0.5 * (1.0 + np.sign(z) * erf))


def _quantile_sample(u: np.ndarray, quantiles: Sequence[int]) -> np.ndarray:
    logq = np.log(np.maximum(np.asarray(quantiles, dtype=float), 1.0))
    return np.asarray(np.maximum(1, np.rint(np.exp(np.interp(u, QUANTILE_PROBS, logq)))), dtype=int)


def profile_arrivals(
    profile: TrafficProfile,
    duration_s: float,
    *,
    rate_multiplier: float = 1.0,
    time_compression: float = 1.0,
    seed: int = 0,
    mix: Mix | None = None,
    start_s: float = 0.0,
) -> Iterator[Arrival]:
    """Open-loop arrivals following the profile for ``duration_s`` of profile time
    (the minute shape repeats after its end), generated one minute at a time."""
    if rate_multiplier <= 0 or time_compression <= 0:
        raise SimError("rate_multiplier and time_compression must be > 0")
    rng = np.random.default_rng(seed)
    mix_rng = random.Random(seed)
    shape = profile.minute_shape
    # Gaussian copula correlation from the rank correlation (Pearson of normals).
    rho = 2.0 * math.sin(math.pi * profile.token_rank_corr / 6.0)
    cv2 = profile.second_cv2
    t0 = start_s
    end = start_s + duration_s
    while t0 < end:
        span = min(60.0, end - t0)
        n_sec = int(math.ceil(span))
        minute = int(t0 // 60) % len(shape)
        base = profile.mean_rps * shape[minute] * rate_multiplier
        g = rng.gamma(1.0 / cv2, cv2, size=n_sec) if cv2 > 0 else np.ones(n_sec)
        counts = rng.poisson(base * g)
        times = np.concatenate(
            [t0 + s + np.sort(rng.random(c)) for s, c in enumerate(counts) if c > 0]
            or [np.empty(0)]
        )
        times = times[times < min(end, t0 + 60.0)]
        n = times.size
        z1 = rng.standard_normal(n)
        z2 = rho * z1 + math.sqrt(max(0.0, 1 - rho * rho)) * rng.standard_normal(n)
        inp = _quantile_sample(_norm_cdf(z1), profile.input_quantiles)
        out = _quantile_sample(_norm_cdf(z2), profile.output_quantiles)
        for i in range(n):
            tenant, prio = "default", 0
            if mix is not None:
                c = mix.pick(mix_rng)
                tenant, prio = c.tenant, c.priority
            yield Arrival(
                float(times[i] - start_s) / time_compression,
                int(inp[i]),
                int(out[i]),
                tenant,
                prio,
            )
        t0 += 60.0
