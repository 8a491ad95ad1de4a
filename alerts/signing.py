"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; each signature is
``v1,<base64 HMAC-SHA256>``. Secrets are ``whsec_<base64>`` (other strings are used as
raw bytes). During rotation a variable holds several secrets separated by spaces and the
sender emits one signature per secret, space-separated, so receivers on either secret
accept the message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from alerts.errors import InvalidInput, SignatureError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300.0


def parse_secrets(value: str) -> list[bytes]:
    """Keys from an environment value: ``"whsec_a whsec_b"`` gives two keys."""
    keys = []
    for i, item in enumerate(value.split()):
        if item.startswith(SECRET_PREFIX):
            try:
                keys.append(base64.b64decode(item[len(SECRET_PREFIX) :], validate=True))
            except binascii.Error as exc:
                raise InvalidInput(
                    [f"secret #{i + 1}: {SECRET_PREFIX} secrets must be base64 ({exc})"]
                ) from exc
        else:
            keys.append(item.encode())
    if not keys:
        raise InvalidInput(["no signing secret given"])
    return keys


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> str:
    """The ``webhook-signature`` header value: one ``v1,...`` per key, space-separated."""
    return " ".join(_signature(k, msg_id, timestamp, body) for k in keys)


def headers(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id, timestamp, body, keys),
    }


def verify(
    body: bytes,
    received: Mapping[str, str],
    keys: Sequence[bytes],
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a received message as a receiver would; returns its ``webhook-id``.

    ``received`` is the request's headers (case-insensitive lookups are the caller's:
    pass lower-cased names). Raises ``SignatureError`` naming what failed.
    """
    msg_id = received.get("webhook-id")
    ts_text = received.get("webhook-timestamp")
    sig_text = received.get("webhook-signature")
    if not msg_id or not ts_text or not sig_text:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        ts = int(ts_text)
    except ValueError:
        raise SignatureError(f"webhook-timestamp is not unix seconds: {ts_text!r}") from None
    if abs(now - ts) > tolerance_s:
        raise SignatureError(f"webhook-timestamp {ts} is outside the {tolerance_s:g}s tolerance")
    expected = {_signature(k, msg_id, ts, body) for k in keys}
    for given in sig_text.split():
        if not given.startswith("v1,"):
            continue
        if any(hmac.compare_digest(given.encode(), e.encode()) for e in expected):
            return msg_id
    raise SignatureError("no signature matches any of the given secrets")
