"""What each receiver kind is sent: bodies rendered at enqueue, requests built at send.

Bodies are persisted in the delivery queue, so they never hold secrets: PagerDuty's
routing key and the webhook signing keys are read from the environment when sending.

- ``webhook``: Alertmanager's webhook payload, version 4, signed per Standard Webhooks
  when the receiver names a ``secret_env``.
- ``pagerduty``: Events API v2, ``trigger`` / ``resolve`` with one stable ``dedup_key``
  per receiver and alert group (as Alertmanager does).
- ``slack``: incoming webhook, ``text`` plus ``blocks``.
- ``alertmanager``: ``POST /api/v2/alerts`` to an existing Alertmanager, like Prometheus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alerts import signing
from alerts.delivery_model import Delivery
from alerts.errors import InvalidInput, PermanentDelivery
from alerts.model import FIRING, RESOLVED, Alert, rfc3339
from controlplane.config import Receiver

PD_SEVERITY = {
    "page": "critical", "critical": "critical", "error": "error", "ticket": "warning",
    "warning": "warning", "info": "info",
}  # fmt: skip
SLACK_HEADER_MAX = 150
PD_SUMMARY_MAX = 1024


@dataclass(frozen=True)
class Notification:
    """One flush of one alert group to one receiver."""

    receiver: str
    group_key: str
    group_labels: dict[str, str]
    alerts: tuple[Alert, ...]
    external_url: str

    @property
    def status(self) -> str:
        return FIRING if any(a.state == FIRING for a in self.alerts) else RESOLVED


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = dict(maps[0])
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def alert_status(a: Alert) -> str:
    return RESOLVED if a.state == RESOLVED else FIRING


def webhook_payload(n: Notification) -> dict[str, Any]:
    """Alertmanager's webhook body, version 4, field for field."""
    return {
        "receiver": n.receiver,
        "status": n.status,
        "alerts": [
            {
                "status": alert_status(a),
                "labels": dict(sorted(a.labels.items())),
                "annotations": dict(sorted(a.annotations.items())),
                "startsAt": rfc3339(a.starts_at()),
                # Alertmanager's webhook zeroes endsAt until the alert is resolved.
                "endsAt": rfc3339(a.ends_at() if a.state == RESOLVED else None),
                "generatorURL": a.generator_url,
                "fingerprint": a.fingerprint,
            }
            for a in n.alerts
        ],
        "groupLabels": dict(sorted(n.group_labels.items())),
        "commonLabels": dict(sorted(_common([a.labels for a in n.alerts]).items())),
        "commonAnnotations": dict(sorted(_common([a.annotations for a in n.alerts]).items())),
        "externalURL": n.external_url,
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
    }


def _title(n: Notification) -> str:
    firing = sum(1 for a in n.alerts if a.state == FIRING)
    count = firing if n.status == FIRING else len(n.alerts)
    labels = " ".join(n.group_labels[k] for k in sorted(n.group_labels))
    return f"[{n.status.upper()}:{count}] {labels}".rstrip()


def dedup_key(receiver: str, group_key: str) -> str:
    return hashlib.sha256(f"{receiver}\x00{group_key}".encode()).hexdigest()


def pagerduty_payload(n: Notification) -> dict[str, Any]:
    key = dedup_key(n.receiver, n.group_key)
    if n.status == RESOLVED:
        return {"event_action": "resolve", "dedup_key": key}
    firing = [a for a in n.alerts if a.state == FIRING]
    common = _common([a.labels for a in firing])
    summary = _title(n)
    first_summary = firing[0].annotations.get("summary", "") if firing else ""
    if first_summary:
        summary = f"{summary}: {first_summary}"
    return {
        "event_action": "trigger",
        "dedup_key": key,
        "client": "Governor",
        "client_url": n.external_url,
        "payload": {
            "summary": summary[:PD_SUMMARY_MAX],
            "severity": PD_SEVERITY.get(common.get("severity", ""), "error"),
            "source": common.get("pool") or "governor",
            "timestamp": rfc3339(min((a.starts_at() or 0) for a in firing)),
            "component": common.get("pool", ""),
            "group": common.get("slo", ""),
            "class": common.get("alertname", ""),
            "custom_details": {
                "firing": [_line(a) for a in firing],
                "num_firing": len(firing),
                "num_resolved": len(n.alerts) - len(firing),
            },
        },
    }


def _line(a: Alert) -> str:
    text = a.annotations.get("summary") or a.labels.get("alertname", a.fingerprint)
    return f"{text} ({', '.join(f'{k}={v}' for k, v in sorted(a.labels.items()))})"


def slack_payload(n: Notification) -> dict[str, Any]:
    title = _title(n)
    lines = []
    for a in n.alerts:
        mark = ":red_circle:" if a.state == FIRING else ":white_check_mark:"
        line = f"{mark} *{a.labels.get('alertname', a.fingerprint)}* {_line(a)}"
        runbook = a.annotations.get("runbook") or a.annotations.get("runbook_url")
        if runbook:
            line += f" <{runbook}|runbook>"
        lines.append(line)
    return {
        "text": f"{title}\n" + "\n".join(lines),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text",
                                        "text": title[:SLACK_HEADER_MAX]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:3000]}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"<{n.external_url}|Governor> {n.group_key}"}
            ]},
        ],
    }  # fmt: skip


def alertmanager_payload(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    """``POST /api/v2/alerts`` body, as Prometheus' notifier sends it."""
    return [
        {
            "labels": dict(a.labels),
            "annotations": dict(a.annotations),
            "startsAt": rfc3339(a.starts_at()),
            "endsAt": rfc3339(a.ends_at()),
            "generatorURL": a.generator_url,
        }
        for a in alerts
    ]


def json_dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def render(kind: str, n: Notification) -> str:
    if kind == "webhook":
        body: Any = webhook_payload(n)
    elif kind == "pagerduty":
        body = pagerduty_payload(n)
    elif kind == "slack":
        body = slack_payload(n)
    else:
        raise ValueError(f"receiver kind {kind!r} is not grouped")
    return json_dumps(body)


def target_url(r: Receiver) -> str:
    if r.kind == "alertmanager":
        return r.url.rstrip("/") + "/api/v2/alerts"
    return r.url


@dataclass(frozen=True)
class Outbound:
    url: str
    body: bytes
    headers: dict[str, str]


def build_request(d: Delivery, r: Receiver, env: Mapping[str, str], now: float) -> Outbound:
    """The HTTP request for one attempt, with secrets read from the environment now."""
    body = d.body.encode()
    hdrs = {"content-type": "application/json", "user-agent": "Governor-Alerts/0.1"}
    if r.kind == "pagerduty":
        key = env.get(r.routing_key_env or "", "")
        if not r.routing_key_env or not key:
            raise PermanentDelivery(
                f"receiver {r.name!r}: PagerDuty routing key missing: set routing_key_env "
                f"and the environment variable {r.routing_key_env or '(unset)'}"
            )
        data = json.loads(d.body)
        data["routing_key"] = key
        body = json.dumps(data, separators=(",", ":")).encode()
    if r.secret_env:
        value = env.get(r.secret_env, "")
        if not value:
            raise PermanentDelivery(
                f"receiver {r.name!r}: signing secret variable {r.secret_env} is not set"
            )
        try:
            keys = signing.parse_secrets(value)
        except InvalidInput as exc:
            raise PermanentDelivery(f"receiver {r.name!r}: {r.secret_env}: {exc}") from exc
        hdrs.update(signing.headers(d.id, int(now), body, keys))
    return Outbound(d.url, body, hdrs)
