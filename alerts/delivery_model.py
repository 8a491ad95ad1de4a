"""A queued notification: one HTTP request to one receiver, retried until it lands."""

from __future__ import annotations

from dataclasses import dataclass

from alerts.model import rfc3339

PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
DEAD = "dead"
# An Alertmanager push replaced by a newer push carrying the same alerts' newer state.
SUPERSEDED = "superseded"
OPEN = (PENDING, RETRYING)


@dataclass
class Delivery:
    id: str  # also the Standard Webhooks ``webhook-id``: stable across retries
    receiver: str
    kind: str
    group_key: str
    url: str
    body: str  # JSON without secrets; secrets are added when sending
    fingerprints: tuple[str, ...] = ()
    status: str = PENDING
    attempts: int = 0
    created_at: float = 0.0
    next_attempt_at: float = 0.0
    updated_at: float = 0.0
    last_error: str = ""
    last_status: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "receiver": self.receiver,
            "kind": self.kind,
            "groupKey": self.group_key,
            "status": self.status,
            "attempts": self.attempts,
            "createdAt": rfc3339(self.created_at),
            "nextAttemptAt": rfc3339(self.next_attempt_at),
            "updatedAt": rfc3339(self.updated_at),
            "lastError": self.last_error,
            "lastStatus": self.last_status,
            "fingerprints": list(self.fingerprints),
        }
