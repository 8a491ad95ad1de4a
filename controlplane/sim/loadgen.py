"""Live load generator: open-loop OpenAI traffic from a trace, the fitted profile or a
synthetic pattern, sent to a router (or any OpenAI-compatible endpoint).

Open loop: each request is sent at its arrival time whether or not earlier ones were
answered; when ``concurrency`` requests are already in flight the new one is dropped and
counted (``dropped``) instead of delaying the schedule. Each request asks for exactly the
trace's output tokens (``max_tokens`` with ``ignore_eos``, as vLLM's benchmark does), with
a prompt of the trace's input tokens, and carries its tenant and priority in the
``X-Tenant`` / ``X-Priority`` headers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import httpx

from controlplane.sim import wire
from controlplane.sim.errors import SimError
from controlplane.sim.traffic import Arrival


@dataclass
class LoadStats:
    scheduled: int = 0  # arrivals whose time came
    sent: int = 0
    ok: int = 0
    errors: int = 0  # HTTP errors other than 429, transport errors, error events in streams
    rejected: int = 0  # 429 from admission
    dropped: int = 0  # over the concurrency bound: never sent
    in_flight: int = 0
    output_tokens: int = 0
    ttft_sum_s: float = 0.0
    ttft_count: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_ttft_s"] = self.ttft_sum_s / self.ttft_count if self.ttft_count else None
        return out


def looped(
    make: Callable[[], Iterable[Arrival]], period_s: float | None = None
) -> Iterator[Arrival]:
    """Repeat a finite arrival source forever, each pass shifted after the previous one
    (by ``period_s``, else by its last arrival time)."""
    offset = 0.0
    for _ in itertools.count():
        last = 0.0
        n = 0
        for a in make():
            last = a.t_offset_s
            n += 1
            yield a._replace(t_offset_s=a.t_offset_s + offset)
        if n == 0:
            return
        offset += period_s if period_s is not None else last


class Progress:
    """A one-line progress bar on a terminal (plain ``\\r`` updates, no dependency)."""

    def __init__(self, out: TextIO = sys.stderr, *, total_s: float | None = None) -> None:
        self.out = out
        self.total_s = total_s

    def render(self, stats: LoadStats, elapsed_s: float) -> str:
        rate = stats.sent / elapsed_s if elapsed_s > 0 else 0.0
        head = f"{elapsed_s:7.1f}s"
        if self.total_s:
            frac = min(1.0, elapsed_s / self.total_s)
            filled = int(frac * 24)
            head = f"[{'#' * filled}{'.' * (24 - filled)}] {frac * 100:3.0f}% {elapsed_s:6.1f}s"
        return (
            f"{head} sent {stats.sent} ok {stats.ok} err {stats.errors} 429 {stats.rejected} "
            f"drop {stats.dropped} inflight {stats.in_flight} {rate:.1f} req/s"
        )

    def update(self, stats: LoadStats, elapsed_s: float) -> None:
        self.out.write("\r" + self.render(stats, elapsed_s) + "\x1b[K")
        self.out.flush()

    def close(self, stats: LoadStats, elapsed_s: float) -> None:
        self.update(stats, elapsed_s)
        self.out.write("\n")
        self.out.flush()


Sleep = Callable[[float], Awaitable[None]]


class LoadGenerator:
    def __init__(
        self,
        url: str,
        arrivals: Iterable[Arrival],
        *,
        model: str = "",
        concurrency: int = 256,
        stream_share: float = 0.5,
        timeout_s: float = 300.0,
        seed: int = 0,
        duration_s: float | None = None,
        progress: Progress | None = None,
        progress_interval_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if concurrency < 1:
            raise SimError(f"concurrency must be >= 1, got {concurrency}")
        if not 0.0 <= stream_share <= 1.0:
            raise SimError(f"stream_share must be in [0, 1], got {stream_share}")
        self.url = url.rstrip("/")
        self.arrivals = arrivals
        self.model = model
        self.concurrency = concurrency
        self.stream_share = stream_share
        self.timeout_s = timeout_s
        self.duration_s = duration_s
        self.progress = progress
        self.progress_interval_s = progress_interval_s
        self.stats = LoadStats()
        self._rng = random.Random(seed)
        self._transport = transport
        self._monotonic = monotonic
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()

    def body(self, a: Arrival, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": wire.make_prompt(a.input_tokens),
            "max_tokens": max(1, a.output_tokens),
            "ignore_eos": True,
            "stream": stream,
        }
        if self.model:
            body["model"] = self.model
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def run(self, stop: asyncio.Event | None = None) -> LoadStats:
        """Send every arrival on time (until ``duration_s`` or ``stop``), then wait for
        the requests in flight."""
        stop = stop or asyncio.Event()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=64)
        timeout = httpx.Timeout(self.timeout_s, connect=10.0)
        async with httpx.AsyncClient(
            limits=limits, timeout=timeout, transport=self._transport
        ) as client:
            t0 = self._monotonic()
            ticker = asyncio.create_task(self._tick(t0, stop))
            try:
                for a in self.arrivals:
                    if self.duration_s is not None and a.t_offset_s >= self.duration_s:
                        break
                    delay = t0 + a.t_offset_s - self._monotonic()
                    if delay > 0:
                        if await _sleep_or_stop(self._sleep, delay, stop):
                            break
                    elif stop.is_set():
                        break
                    self._launch(client, a)
                await self._drain(stop)
            finally:
                pending = list(self._tasks)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                ticker.cancel()
                if self.progress is not None:
                    self.progress.close(self.stats, self._monotonic() - t0)
        return self.stats

    async def _drain(self, stop: asyncio.Event) -> None:
        """Wait for the requests in flight; on ``stop`` give up on them (cancelled)."""
        stopper = asyncio.create_task(stop.wait())
        try:
            while self._tasks and not stop.is_set():
                await asyncio.wait({*self._tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()

    def _launch(self, client: httpx.AsyncClient, a: Arrival) -> None:
        self.stats.scheduled += 1
        if self.stats.in_flight >= self.concurrency:
            self.stats.dropped += 1
            return
        stream = self._rng.random() < self.stream_share
        self.stats.in_flight += 1
        self.stats.sent += 1
        task = asyncio.create_task(self._send(client, a, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tick(self, t0: float, stop: asyncio.Event) -> None:
        if self.progress is None:
            return
        while not stop.is_set():
            self.progress.update(self.stats, self._monotonic() - t0)
            await asyncio.sleep(self.progress_interval_s)

    def _count(self, status: str) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1

    async def _send(self, client: httpx.AsyncClient, a: Arrival, stream: bool) -> None:
        headers = {wire.TENANT_HEADER: a.tenant, wire.PRIORITY_HEADER: str(a.priority)}
        start = self._monotonic()
        try:
            async with client.stream(
                "POST", self.url + "/v1/completions", json=self.body(a, stream), headers=headers
            ) as resp:
                self._count(str(resp.status_code))
                if resp.status_code == 429:
                    self.stats.rejected += 1
                    await resp.aread()
                elif resp.status_code != 200:
                    self.stats.errors += 1
                    await resp.aread()
                elif stream:
                    await self._read_stream(resp, start)
                else:
                    body = json.loads(await resp.aread())
                    self.stats.ok += 1
                    self.stats.output_tokens += int(
                        body.get("usage", {}).get("completion_tokens", 0)
                    )
        except (httpx.HTTPError, ValueError) as exc:
            self._count(type(exc).__name__)
            self.stats.errors += 1
        finally:
            self.stats.in_flight -= 1

    async def _read_stream(self, resp: httpx.Response, start: float) -> None:
        first = True
        failed = False
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            if first:
                self.stats.ttft_sum_s += self._monotonic() - start
                self.stats.ttft_count += 1
                first = False
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                failed = True
            elif isinstance(event.get("usage"), dict):
                self.stats.output_tokens += int(event["usage"].get("completion_tokens", 0))
        if failed:
            self.stats.errors += 1
            self._count("stream_error")
        else:
            self.stats.ok += 1


async def _sleep_or_stop(sleep: Sleep, delay: float, stop: asyncio.Event) -> bool:
    """Sleep ``delay`` s; True if ``stop`` was set meanwhile."""
    if stop.is_set():
        return True
    waiter = asyncio.create_task(stop.wait())
    sleeper = asyncio.ensure_future(sleep(delay))
    done, _ = await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    for t in (waiter, sleeper):
        if t not in done:
            t.cancel()
    return stop.is_set()


@dataclass(frozen=True)
class Source:
    """Where arrivals come from: exactly one of a trace file, a profile kind or a pattern."""

    trace: str | None = None
    profile: str | None = None  # "conv" | "code": the fitted Azure profile
    pattern: str | None = None  # traffic.parse_pattern syntax
    tokens: tuple[int, int] | None = None  # fixed (input, output) for patterns
    rate_multiplier: float = 1.0
    time_compression: float = 1.0
    mix: str | None = None  # traffic.Mix syntax: tenant:weight[:priority],...
    seed: int = 0
    loop: bool = False

    def arrivals(self, duration_s: float | None = None) -> Iterator[Arrival]:
        """Arrivals in wall-clock offsets (compression applied). Profiles and patterns
        are generated for ``duration_s`` wall seconds (None: forever); a trace replays
        whole (looped if asked), whatever ``duration_s``: ``LoadGenerator`` stops sending
        at its own ``duration_s``."""
        from controlplane.sim import traffic

        given = [x for x in (self.trace, self.profile, self.pattern) if x]
        if len(given) != 1:
            raise SimError("give exactly one traffic source: a trace file, a profile or a pattern")
        mix = traffic.Mix.parse(self.mix) if self.mix else None
        span = float("inf") if duration_s is None else duration_s * self.time_compression
        kw: dict[str, Any] = {
            "rate_multiplier": self.rate_multiplier,
            "time_compression": self.time_compression,
            "mix": mix,
        }
        if self.trace:
            rows = traffic.read_azure_csv(self.trace).rows

            def one_pass() -> Iterator[Arrival]:
                return traffic.replay(rows, seed=self.seed, **kw)

            # Replays end one mean gap after the last request, then start over.
            gap = (rows[-1].t_offset_s / max(1, len(rows) - 1)) if rows else 0.0
            period = (rows[-1].t_offset_s + gap) / self.time_compression if rows else None
            return looped(one_pass, period) if self.loop else one_pass()
        if self.profile:
            from controlplane.sim.profile import load_profile, profile_arrivals

            prof = load_profile(self.profile)
            return profile_arrivals(prof, span, seed=self.seed, **kw)
        assert self.pattern is not None
        pattern = traffic.parse_pattern(self.pattern)
        if self.tokens is not None:
            sampler = traffic.fixed_tokens(*self.tokens)
        else:  # the Azure conversation trace's means, coefficient of variation 1
            sampler = traffic.lognormal_tokens(1155.0, 1.0, 211.0, 1.0)
        return traffic.poisson_arrivals(pattern, span, sampler, seed=self.seed, **kw)
