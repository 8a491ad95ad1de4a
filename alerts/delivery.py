"""At-least-once delivery: a persisted queue, retries with backoff, dead letters.

A delivery is retried on network errors, 5xx, 408 and 429 with exponential backoff and
full jitter (``uniform(0, min(max, initial * 2**n))`` from an injected RNG), or exactly
after ``Retry-After`` when the receiver sends one. Other 4xx, a missing secret, too many
attempts or too old go to the dead letters, from where an operator may requeue them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from alerts.delivery_model import DEAD, DELIVERED, OPEN, PENDING, RETRYING, SUPERSEDED, Delivery
from alerts.errors import DeliveryError, PermanentDelivery, RetryableDelivery
from alerts.notifiers import build_request
from controlplane.config import Receiver

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 1.0
    max_s: float = 300.0
    max_attempts: int = 12
    max_age_s: float = 6 * 3600.0

    def backoff(self, attempts: int, rng: random.Random) -> float:
        """Full jitter after the ``attempts``-th failure (1-based)."""
        ceiling = min(self.max_s, self.initial_s * 2 ** max(attempts - 1, 0))
        return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def send(http: httpx.Client, d: Delivery, r: Receiver, env: Mapping[str, str], now: float) -> int:
    """One attempt; returns the status on 2xx, raises a ``DeliveryError`` otherwise."""
    req = build_request(d, r, env, now)
    try:
        resp = http.post(req.url, content=req.body, headers=req.headers, timeout=r.timeout_s)
    except httpx.TransportError as exc:
        raise RetryableDelivery(f"{type(exc).__name__}: {exc}") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise PermanentDelivery(f"{type(exc).__name__}: {exc}") from exc
    code = resp.status_code
    if 200 <= code < 300:
        return code
    detail = f"HTTP {code}: {resp.text[:300]}"
    if code >= 500 or code in RETRY_STATUSES:
        retry_after = parse_retry_after(resp.headers.get("retry-after"), now)
        raise RetryableDelivery(detail, status=code, retry_after_s=retry_after)
    raise PermanentDelivery(detail, status=code)


class DeliveryQueue:
    """Open deliveries in memory (the store has them too); sends the due ones."""

    def __init__(
        self,
        *,
        http: httpx.Client,
        receivers: Mapping[str, Receiver],
        policy: RetryPolicy,
        rng: random.Random,
        env: Mapping[str, str],
        persist: Callable[[Delivery, float], None],
    ) -> None:
        self._http = http
        self._receivers = receivers
        self._policy = policy
        self._rng = rng
        self._env = env
        self._persist = persist
        self.open: dict[str, Delivery] = {}
        # Newest delivery per (receiver, group key): what GET /alerts reports.
        self.latest: dict[tuple[str, str], Delivery] = {}

    def restore(self, deliveries: list[Delivery]) -> None:
        for d in sorted(deliveries, key=lambda x: x.created_at):
            self._track(d)
            self.latest[(d.receiver, d.group_key)] = d

    def _track(self, d: Delivery) -> None:
        if d.status in OPEN:
            self.open[d.id] = d
        else:
            self.open.pop(d.id, None)

    def enqueue(self, d: Delivery, now: float, *, in_flight: Set[str] = frozenset()) -> None:
        """Queue ``d``; it supersedes older open deliveries of the same receiver and group.

        A newer notification carries the group's current state, so sending an older one
        after it (a retried "firing" after the "resolved") would mislead the receiver.
        Deliveries being sent right now are superseded by ``settle`` if they fail.
        """
        d.status, d.created_at, d.next_attempt_at, d.updated_at = PENDING, now, now, now
        stale = [
            o for o in self.open.values()
            if (o.receiver, o.group_key) == (d.receiver, d.group_key) and o.id not in in_flight
        ]  # fmt: skip
        self._persist(d, now)
        self._track(d)
        self.latest[(d.receiver, d.group_key)] = d
        for o in stale:
            o.status, o.last_error = SUPERSEDED, f"superseded by {d.id}"
            self.update(o, now)

    def update(self, d: Delivery, now: float) -> None:
        d.updated_at = now
        self._persist(d, now)
        self._track(d)

    def due(self, now: float) -> list[Delivery]:
        ready = [d for d in self.open.values() if d.next_attempt_at <= now]
        return sorted(ready, key=lambda d: (d.next_attempt_at, d.created_at))

    def attempt(self, d: Delivery, now: float) -> DeliveryError | None:
        """Send one due delivery; no state changes (safe outside locks, in parallel)."""
        r = self._receivers.get(d.receiver)
        if r is None:
            return PermanentDelivery(f"receiver {d.receiver!r} is no longer configured")
        try:
            d.last_status = send(self._http, d, r, self._env, now)
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # export boundary: never lose the delivery to a bug
            log.exception("delivery %s to %s failed unexpectedly", d.id, d.receiver)
            return PermanentDelivery(f"unexpected {type(exc).__name__}: {exc}")
        return None

    def settle(self, d: Delivery, error: DeliveryError | None, now: float) -> None:
        """Record an attempt's outcome: delivered, retry later, dead, or superseded."""
        d.attempts += 1
        if error is None:
            d.status, d.last_error = DELIVERED, ""
        else:
            self._fail(d, error, now, permanent=not isinstance(error, RetryableDelivery))
        newest = self.latest.get((d.receiver, d.group_key))
        if d.status in OPEN and newest is not None and newest is not d:
            # A newer notification of the group was queued while this one was in flight.
            d.status, d.last_error = SUPERSEDED, f"superseded by {newest.id}"
        self.update(d, now)

    def _fail(self, d: Delivery, exc: DeliveryError, now: float, *, permanent: bool) -> None:
        d.last_error, d.last_status = str(exc), exc.status
        p = self._policy
        if not permanent and d.attempts >= p.max_attempts:
            d.last_error = f"gave up after {d.attempts} attempts: {exc}"
            permanent = True
        elif not permanent and now - d.created_at >= p.max_age_s:
            d.last_error = f"gave up after {now - d.created_at:.0f}s: {exc}"
            permanent = True
        if permanent:
            d.status = DEAD
            log.warning("delivery %s to %s is dead: %s", d.id, d.receiver, d.last_error)
            return
        delay = exc.retry_after_s
        if delay is None:
            delay = p.backoff(d.attempts, self._rng)
        d.status, d.next_attempt_at = RETRYING, now + delay
        log.info("delivery %s to %s failed (%s), retry in %.1fs", d.id, d.receiver, exc, delay)

    def requeue(self, d: Delivery, now: float) -> None:
        d.status, d.attempts, d.next_attempt_at, d.last_error = PENDING, 0, now, ""
        d.created_at = now  # the age limit counts from the requeue
        self.update(d, now)
        self.latest[(d.receiver, d.group_key)] = d  # the operator made it the newest
