"""The scraper: fetch every target's ``/metrics``, adapt it to rows, emit them to a ``Sink``.

Each target runs on its own schedule (as in Prometheus), so a slow or dead target only
delays itself: fetches run concurrently on one asyncio loop in a background thread, at most
``concurrency`` at a time, each bounded by ``timeout_s`` for the whole request (connect,
headers and body). Rows of a target are emitted as soon as its scrape finishes. A failed
scrape marks the target down in ``health()`` (the signal the policy uses) and, for an
engine, emits a ``ReplicaSample`` with ``up=False`` so the store has the outage too.

``scrape_once()`` runs one round synchronously; tests and ``governor`` tools use it with a
manual clock, the component uses ``start()``/``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from collector.errors import ScrapeError
from collector.records import ReplicaSample, Sink
from collector.scrape_adapters import adapter_for
from collector.scrape_parse import ACCEPT, parse
from collector.scrape_rates import CounterRates
from collector.scrape_targets import ENGINE_KINDS, FileDiscovery, Target, merge

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024  # a /metrics larger than this is a misconfiguration


class Clock(Protocol):
    def now(self) -> float: ...


class _WallClock:
    def now(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class TargetHealth:
    url: str
    kind: str
    pool: str
    replica: str
    source: str
    up: bool | None = None  # None: not scraped yet
    last_error: str = ""
    last_scrape: float | None = None  # epoch seconds
    last_success: float | None = None
    duration_s: float | None = None
    consecutive_failures: int = 0
    series: int = 0
    rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}" if str(exc) else "connection refused"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__


class Scraper:
    def __init__(
        self,
        sink: Sink,
        *,
        targets: Sequence[Target] = (),
        discovery: FileDiscovery | None = None,
        interval_s: float = 15.0,
        timeout_s: float = 5.0,
        concurrency: int = 8,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rates: CounterRates | None = None,
        on_scrape: Callable[[TargetHealth], None] | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or concurrency < 1:
            raise ValueError("interval_s and timeout_s must be > 0 and concurrency >= 1")
        self._sink = sink
        self._static = list(targets)
        self._discovery = discovery
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._clock: Clock = clock or _WallClock()
        self._transport = transport
        self._rates = rates or CounterRates()
        self._on_scrape = on_scrape
        self._lock = threading.Lock()
        self._health: dict[str, TargetHealth] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sem: asyncio.Semaphore | None = None
        self._targets: list[Target] = []
        self.refresh_targets()

    # --- targets and health ---------------------------------------------------------

    def refresh_targets(self) -> list[Target]:
        """Re-read discovery files (if changed) and return the current target list."""
        if self._discovery is not None:
            self._discovery.refresh()
        current = merge(self._static, self._discovery.targets() if self._discovery else [])
        with self._lock:
            keep = {t.key for t in current}
            for gone in [k for k in self._health if k not in keep]:
                del self._health[gone]
                self._rates.forget(gone)
            for t in current:
                h = self._health.get(t.key)
                if h is None or (h.kind, h.pool, h.replica, h.source) != (
                    t.kind,
                    t.pool,
                    t.replica,
                    t.source,
                ):
                    base = h or TargetHealth(t.url, t.kind, t.pool, t.replica, t.source)
                    self._health[t.key] = replace(
                        base, kind=t.kind, pool=t.pool, replica=t.replica, source=t.source
                    )
        self._targets = current
        return current

    def targets(self) -> list[Target]:
        return list(self._targets)

    def health(self) -> list[TargetHealth]:
        with self._lock:
            return [self._health[k] for k in sorted(self._health)]

    @property
    def has_discovery(self) -> bool:
        return self._discovery is not None

    def discovery_errors(self) -> dict[str, str]:
        return self._discovery.errors if self._discovery else {}

    def _record(
        self, target: Target, *, error: str, duration: float, series: int, rows: int
    ) -> TargetHealth:
        now = self._clock.now()
        with self._lock:
            h = self._health.get(target.key) or TargetHealth(
                target.url, target.kind, target.pool, target.replica, target.source
            )
            if error:
                h = replace(
                    h,
                    up=False,
                    last_error=error,
                    last_scrape=now,
                    duration_s=duration,
                    consecutive_failures=h.consecutive_failures + 1,
                    series=0,
                    rows=rows,
                )
            else:
                h = replace(
                    h,
                    up=True,
                    last_error="",
                    last_scrape=now,
                    last_success=now,
                    duration_s=duration,
                    consecutive_failures=0,
                    series=series,
                    rows=rows,
                )
            if target.key in {t.key for t in self._targets}:
                self._health[target.key] = h
        if self._on_scrape is not None:
            self._on_scrape(h)
        return h

    # --- one scrape -----------------------------------------------------------------

    async def _fetch(self, client: httpx.AsyncClient, target: Target) -> tuple[str, str | None]:
        async with asyncio.timeout(self.timeout_s):
            async with client.stream("GET", target.url, headers={"Accept": ACCEPT}) as resp:
                if resp.status_code != 200:
                    raise ScrapeError(f"HTTP {resp.status_code} from {target.url}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ScrapeError(f"body larger than {MAX_BODY_BYTES} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks).decode(resp.encoding or "utf-8", errors="replace")
                return body, resp.headers.get("content-type")

    async def scrape_target(self, client: httpx.AsyncClient, target: Target) -> TargetHealth:
        """Fetch, parse, adapt and emit one target; never raises."""
        sem = self._sem or asyncio.Semaphore(self.concurrency)
        async with sem:
            started = time.perf_counter()
            error = ""
            records: list[Any] = []
            series = 0
            try:
                body, ctype = await self._fetch(client, target)
                # Parsing is CPU work (prometheus-client's parser is pure Python): off the
                # loop, so other targets' sockets and timeouts keep being served meanwhile.
                records, series = await asyncio.to_thread(self._adapt, target, body, ctype)
            except (ScrapeError, httpx.HTTPError, TimeoutError, OSError) as exc:
                error = _describe(exc, self.timeout_s)
            except Exception as exc:  # an adapter bug must not stop the loop
                log.exception("scraping %s failed", target.url)
                error = f"internal error: {exc}"
            duration = time.perf_counter() - started
        if error:
            log.debug("scrape %s failed: %s", target.url, error)
            if target.kind in ENGINE_KINDS:
                records = [self._down_sample(target, duration)]
        else:
            records = [_with_duration(r, duration) for r in records]
        self._emit(records)
        return self._record(
            target, error=error, duration=duration, series=series, rows=len(records)
        )

    def _adapt(self, target: Target, body: str, ctype: str | None) -> tuple[list[Any], int]:
        samples = parse(body, ctype)
        records = adapter_for(target.kind).records(samples, target, self._clock.now(), self._rates)
        return records, len(samples)

    def _down_sample(self, target: Target, duration: float) -> ReplicaSample:
        return ReplicaSample(
            ts=datetime.fromtimestamp(self._clock.now(), tz=UTC),
            pool=target.pool,
            replica=target.replica or target.instance,
            model=target.labels.get("model", ""),
            engine=target.kind,
            up=False,
            scrape_duration_s=duration,
        )

    def _emit(self, records: list[Any]) -> None:
        if not records:
            return
        try:
            self._sink.emit(records)
        except Exception:  # the sink's own buffering is its business; keep scraping
            log.exception("sink rejected %d scraped rows", len(records))

    def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s),
            limits=limits,
            transport=self._transport,
            follow_redirects=True,
        )

    async def scrape_all(self) -> list[TargetHealth]:
        """One round over every target, concurrently; each emits as soon as it is done."""
        targets = self.refresh_targets()
        self._sem = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:
            return list(await asyncio.gather(*(self.scrape_target(client, t) for t in targets)))

    def scrape_once(self) -> list[TargetHealth]:
        return asyncio.run(self.scrape_all())

    # --- background loop ------------------------------------------------------------

    async def _target_loop(
        self, client: httpx.AsyncClient, target: Target, stop: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + self.interval_s
            await self.scrape_target(client, target)
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
            except TimeoutError:
                pass

    async def _run(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        self._sem = asyncio.Semaphore(self.concurrency)
        self._loop = asyncio.get_running_loop()
        ready.set()
        tasks: dict[tuple[Any, ...], asyncio.Task[None]] = {}
        # Discovery files are checked at least every 5 s, however long the interval.
        refresh_every = min(self.interval_s, 5.0)
        async with self._client() as client:
            try:
                while not self._stop.is_set():
                    current = {_signature(t): t for t in self.refresh_targets()}
                    for sig in [s for s in tasks if s not in current]:
                        tasks.pop(sig).cancel()
                    for sig, t in current.items():
                        if sig not in tasks:
                            tasks[sig] = asyncio.create_task(
                                self._target_loop(client, t, self._stop)
                            )
                    try:
                        await asyncio.wait_for(self._stop.wait(), refresh_every)
                    except TimeoutError:
                        pass
            finally:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run(ready)), name="governor-scrape", daemon=True
        )
        self._thread.start()
        ready.wait(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = None


def _signature(t: Target) -> tuple[Any, ...]:
    """Identity of a target's scrape loop: any change restarts it with the new settings."""
    return (t.url, t.kind, t.pool, t.replica, t.source, tuple(sorted(t.labels.items())))


def _with_duration(record: Any, duration: float) -> Any:
    if isinstance(record, ReplicaSample):
        return replace(record, scrape_duration_s=duration)
    return record
