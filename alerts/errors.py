"""Exceptions of the alerting package.

    AlertsError
    ├── InvalidInput          a silence, matcher or route the caller gave is malformed
    ├── NotFound              no silence / dead letter with that id
    ├── SignatureError        a webhook signature does not verify (receivers' side)
    ├── StateStoreError       the store could not read or write alert state
    └── DeliveryError         a notification could not be delivered
        ├── RetryableDelivery    the receiver may accept it later (5xx, 408, 429, network)
        └── PermanentDelivery    retrying will not help (other 4xx, missing secret)

Adapters map third-party errors (httpx, the store) into these with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence


class AlertsError(Exception):
    """Base of every error the alerting package raises on purpose."""


class InvalidInput(AlertsError, ValueError):
    """Input from a caller is malformed; ``problems`` names each field and what was wrong."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class NotFound(AlertsError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class SignatureError(AlertsError):
    """A Standard Webhooks signature is missing, stale or wrong."""


class StateStoreError(AlertsError):
    """Reading or writing alert state in the store failed."""


class DeliveryError(AlertsError):
    def __init__(self, message: str, *, status: int = 0, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class RetryableDelivery(DeliveryError):
    """The receiver may accept the same notification later."""


class PermanentDelivery(DeliveryError):
    """Retrying the same notification will not help; it goes to the dead letters."""
