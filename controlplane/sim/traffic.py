"""Traffic for the simulated fleet: trace files, synthetic patterns, tenants and priorities.

Everything yields ``Arrival`` tuples in time order: ``(t_offset_s, input_tokens,
output_tokens, tenant, priority)``, open loop (arrival times do not depend on how fast the
fleet answers). Trace files use the Azure LLM inference trace CSV format::

    TIMESTAMP,ContextTokens,GeneratedTokens
    2023-11-16 18:15:46.6805900,374,44

(UTF-8 byte-order mark, CRLF line ends and 7 fractional digits are accepted). The fitted
profile that generates realistic traffic without a trace lives in ``profile.py``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, Protocol

from controlplane.sim.errors import SimError, TraceFormatError

AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class Arrival(NamedTuple):
    t_offset_s: float
    input_tokens: int
    output_tokens: int
    tenant: str = "default"
    priority: int = 0


# -- trace files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """A loaded trace: ``start`` is the first request's wall time, rows are offsets."""

    path: str
    start: datetime
    rows: tuple[Arrival, ...]

    @property
    def duration_s(self) -> float:
        return self.rows[-1].t_offset_s if self.rows else 0.0

    def slice(self, start_s: float = 0.0, duration_s: float | None = None) -> Trace:
        """Rows in ``[start_s, start_s + duration_s)``, re-based to offset 0."""
        end = math.inf if duration_s is None else start_s + duration_s
        rows = tuple(
            r._replace(t_offset_s=r.t_offset_s - start_s)
            for r in self.rows
            if start_s <= r.t_offset_s < end
        )
        return Trace(self.path, self.start, rows)


def parse_timestamp(text: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS[.fffffff]`` as UTC; fractions beyond 6 digits are rounded to
    the microsecond (``fromisoformat`` rejects the trace's 7 digits on Python 3.11)."""
    head, _, frac = text.strip().partition(".")
    if len(head) != 19 or head[4] != "-" or head[7] != "-" or head[10] != " ":
        raise ValueError(f"expected YYYY-MM-DD HH:MM:SS, got {head!r}")
    # Slicing is ~10x faster than strptime; datetime() still validates every field.
    try:
        dt = datetime(
            int(head[0:4]),
            int(head[5:7]),
            int(head[8:10]),
            int(head[11:13]),
            int(head[14:16]),
            int(head[17:19]),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise ValueError(f"bad date/time {head!r}: {exc}") from None
    if frac:
        if not frac.isdigit():
            raise ValueError(f"bad fractional seconds {frac!r}")
        dt += timedelta(microseconds=round(int(frac) * 1_000_000 / 10 ** len(frac)))
    return dt


def read_azure_csv(path: str | Path, *, tenant: str = "default") -> Trace:
    """Load an Azure-format trace; every malformed line is reported by number."""
    p = Path(path)
    name = str(p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise TraceFormatError(name, 0, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TraceFormatError(name, 0, f"not UTF-8: {exc.reason}") from exc
    lines = text.splitlines()
    if not lines:
        raise TraceFormatError(name, 1, "empty file, expected header " + ",".join(AZURE_HEADER))
    header = tuple(c.strip() for c in lines[0].split(","))
    if header != AZURE_HEADER:
        raise TraceFormatError(
            name, 1, f"header {','.join(header)!r}, expected {','.join(AZURE_HEADER)!r}"
        )
    stamps: list[tuple[datetime, int, int]] = []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != 3:
            raise TraceFormatError(name, no, f"expected 3 columns, got {len(cells)}: {line!r}")
        try:
            ts = parse_timestamp(cells[0])
        except ValueError as exc:
            raise TraceFormatError(name, no, f"bad TIMESTAMP {cells[0]!r}: {exc}") from exc
        try:
            ctx, gen = int(cells[1]), int(cells[2])
        except ValueError as exc:
            raise TraceFormatError(name, no, f"token counts must be integers: {line!r}") from exc
        if ctx < 1 or gen < 1:
            raise TraceFormatError(name, no, f"token counts must be >= 1, got {ctx}, {gen}")
        stamps.append((ts, ctx, gen))
    if not stamps:
        raise TraceFormatError(name, 2, "no requests after the header")
    stamps.sort(key=lambda s: s[0])  # the published files are sorted; others may not be
    start = stamps[0][0]
    rows = tuple(
        Arrival((ts - start).total_seconds(), ctx, gen, tenant, 0) for ts, ctx, gen in stamps
    )
    return Trace(name, start, rows)


# -- transforms ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantClass:
    tenant: str
    weight: float
    priority: int = 0


class Mix:
    """Assigns tenants and priorities by weight, e.g. ``Mix.parse("chat:3:0,batch:1:1")``."""

    def __init__(self, classes: Sequence[TenantClass]) -> None:
        if not classes or any(c.weight <= 0 for c in classes):
            raise SimError("a tenant mix needs at least one class, every weight > 0")
        self.classes = tuple(classes)
        total = sum(c.weight for c in classes)
        acc = 0.0
        self._cum: list[float] = []
        for c in classes:
            acc += c.weight / total
            self._cum.append(acc)

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``tenant:weight[:priority],...``."""
        classes = []
        for part in text.split(","):
            bits = part.strip().split(":")
            if len(bits) not in (2, 3) or not bits[0]:
                raise SimError(f"bad tenant mix entry {part!r}: expected tenant:weight[:priority]")
            try:
                weight = float(bits[1])
                priority = int(bits[2]) if len(bits) == 3 else 0
            except ValueError as exc:
                raise SimError(f"bad tenant mix entry {part!r}: {exc}") from exc
            classes.append(TenantClass(bits[0], weight, priority))
        return cls(classes)

    def pick(self, rng: random.Random) -> TenantClass:
        u = rng.random()
        for c, edge in zip(self.classes, self._cum, strict=True):
            if u < edge:
                return c
        return self.classes[-1]


def replay(
    rows: Iterable[Arrival],
    *,
    rate_multiplier: float = 1.0,
    time_compression: float = 1.0,
    mix: Mix | None = None,
    seed: int = 0,
) -> Iterator[Arrival]:
    """Trace-timed arrivals. ``time_compression`` 10 plays an hour in 6 minutes (rate x10,
    same requests); ``rate_multiplier`` keeps the timeline and thins (< 1) or replicates
    (> 1) requests, copies spread uniformly until the next original arrival."""
    if rate_multiplier <= 0 or time_compression <= 0:
        raise SimError("rate_multiplier and time_compression must be > 0")
    rng = random.Random(seed)
    whole = math.floor(rate_multiplier)
    frac = rate_multiplier - whole
    it = iter(rows)
    cur = next(it, None)
    while cur is not None:
        nxt = next(it, None)
        gap = (nxt.t_offset_s - cur.t_offset_s) if nxt is not None else 0.0
        copies = whole + (1 if rng.random() < frac else 0)
        times = [cur.t_offset_s] + sorted(
            cur.t_offset_s + rng.random() * gap for _ in range(copies - 1)
        )
        for t in times[:copies]:
            out = cur._replace(t_offset_s=t / time_compression)
            if mix is not None:
                c = mix.pick(rng)
                out = out._replace(tenant=c.tenant, priority=c.priority)
            yield out
        cur = nxt


# -- synthetic patterns -------------------------------------------------------------------


class RatePattern(Protocol):
    """Requests per second as a function of time; ``max_rate`` bounds it (for thinning)."""

    @property
    def max_rate(self) -> float: ...

    def rate(self, t: float) -> float: ...


@dataclass(frozen=True)
class Constant:
    rps: float

    @property
    def max_rate(self) -> float:
        return self.rps

    def rate(self, t: float) -> float:
        return self.rps


@dataclass(frozen=True)
class Steps:
    """Piecewise constant: ``steps`` are ``(start_s, rps)``, the first starting at 0."""

    steps: tuple[tuple[float, float], ...]

    @property
    def max_rate(self) -> float:
        return max(r for _, r in self.steps)

    def rate(self, t: float) -> float:
        current = self.steps[0][1]
        for start, r in self.steps:
            if t >= start:
                current = r
        return current


@dataclass(frozen=True)
class Diurnal:
    """``mean * (1 + amplitude * cos(2 pi (t - peak_s) / period_s))``: highest at ``peak_s``."""

    mean_rps: float
    amplitude: float = 0.5
    period_s: float = 86400.0
    peak_s: float = 14 * 3600.0

    @property
    def max_rate(self) -> float:
        return self.mean_rps * (1 + abs(self.amplitude))

    def rate(self, t: float) -> float:
        phase = 2 * math.pi * (t - self.peak_s) / self.period_s
        return max(0.0, self.mean_rps * (1 + self.amplitude * math.cos(phase)))


@dataclass(frozen=True)
class FlashCrowd:
    """Base rate, a linear ramp to ``peak_rps`` at ``start_s``, a hold, an exponential decay."""

    base_rps: float
    peak_rps: float
    start_s: float
    ramp_s: float = 30.0
    hold_s: float = 120.0
    decay_s: float = 120.0

    @property
    def max_rate(self) -> float:
        return max(self.base_rps, self.peak_rps)

    def rate(self, t: float) -> float:
        b, p = self.base_rps, self.peak_rps
        if t < self.start_s:
            return b
        if t < self.start_s + self.ramp_s:
            return b + (p - b) * (t - self.start_s) / self.ramp_s
        t_hold_end = self.start_s + self.ramp_s + self.hold_s
        if t < t_hold_end:
            return p
        return b + (p - b) * math.exp(-(t - t_hold_end) / self.decay_s)


@dataclass(frozen=True)
class OnOff:
    rps: float
    on_s: float
    off_s: float
    off_rps: float = 0.0

    @property
    def max_rate(self) -> float:
        return max(self.rps, self.off_rps)

    def rate(self, t: float) -> float:
        return self.rps if (t % (self.on_s + self.off_s)) < self.on_s else self.off_rps


TokenSampler = Callable[[random.Random], tuple[int, int]]


def fixed_tokens(input_tokens: int, output_tokens: int) -> TokenSampler:
    return lambda rng: (input_tokens, output_tokens)


def lognormal_tokens(
    mean_in: float, cv_in: float, mean_out: float, cv_out: float, *, max_tokens: int = 32768
) -> TokenSampler:
    """Independent lognormals given by mean and coefficient of variation."""

    def params(mean: float, cv: float) -> tuple[float, float]:
        s2 = math.log(1 + cv * cv)
        return math.log(mean) - s2 / 2, math.sqrt(s2)

    mi, si = params(mean_in, cv_in)
    mo, so = params(mean_out, cv_out)

    def sample(rng: random.Random) -> tuple[int, int]:
        i = min(max_tokens, max(1, round(rng.lognormvariate(mi, si))))
        o = min(max_tokens, max(1, round(rng.lognormvariate(mo, so))))
        return i, o

    return sample


def poisson_arrivals(
    pattern: RatePattern,
    duration_s: float,
    tokens: TokenSampler,
    *,
    seed: int = 0,
    mix: Mix | None = None,
    rate_multiplier: float = 1.0,
    time_compression: float = 1.0,
) -> Iterator[Arrival]:
    """Non-homogeneous Poisson arrivals (thinning) for ``duration_s`` of pattern time."""
    if rate_multiplier <= 0 or time_compression <= 0:
        raise SimError("rate_multiplier and time_compression must be > 0")
    lam = pattern.max_rate * rate_multiplier
    if lam <= 0:
        return
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(lam)
        if t >= duration_s:
            return
        if rng.random() * lam > pattern.rate(t) * rate_multiplier:
            continue
        i, o = tokens(rng)
        tenant, prio = "default", 0
        if mix is not None:
            c = mix.pick(rng)
            tenant, prio = c.tenant, c.priority
        yield Arrival(t / time_compression, i, o, tenant, prio)


def parse_pattern(text: str) -> RatePattern:
    """CLI form: ``constant:5``, ``steps:0=2,300=8,600=4``, ``diurnal:5:0.6:3600``,
    ``flash:2:20:600``, ``onoff:8:60:120``."""
    kind, _, rest = text.partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind == "constant" and len(args) == 1:
            return Constant(float(args[0]))
        if kind == "steps" and len(args) == 1:
            pairs = [p.split("=") for p in args[0].split(",")]
            return Steps(tuple((float(a), float(b)) for a, b in pairs))
        if kind == "diurnal" and 1 <= len(args) <= 3:
            vals = [float(a) for a in args]
            return Diurnal(*vals)
        if kind == "flash" and len(args) >= 3:
            return FlashCrowd(*(float(a) for a in args))
        if kind == "onoff" and len(args) in (3, 4):
            return OnOff(*(float(a) for a in args))
    except (ValueError, TypeError) as exc:
        raise SimError(f"bad traffic pattern {text!r}: {exc}") from exc
    raise SimError(
        f"bad traffic pattern {text!r}: expected constant:RPS, steps:T=RPS,..., "
        "diurnal:MEAN[:AMPLITUDE[:PERIOD_S]], flash:BASE:PEAK:START_S[:RAMP:HOLD:DECAY], "
        "onoff:RPS:ON_S:OFF_S[:OFF_RPS]"
    )
