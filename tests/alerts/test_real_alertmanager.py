"""Against the real Alertmanager (Debian ``prometheus-alertmanager``) on loopback.

Governor pushes alerts to it; its webhook delivers them to a loopback recorder. The
same recorder also receives Governor's own webhook for the same alert, and the two
payloads must carry the same fields in the same formats.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alerts.model import fingerprint, rfc3339
from tests.alerts.harness import Harness, Recorder, alerting, sig

pytestmark = pytest.mark.system

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
GROUP_KEY = re.compile(r"^\{\}(/\{[^}]*\})*:\{.*\}$")


def _binary() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("alertmanager not found: install the Debian package 'prometheus-alertmanager'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path, recorder: Recorder) -> Iterator[str]:
    binary = _binary()
    port = _free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(
        "route:\n"
        "  receiver: rec\n"
        "  group_by: [alertname, slo]\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: rec\n"
        "    webhook_configs:\n"
        f"      - url: {recorder.url}/from-alertmanager\n"
        "        send_resolved: true\n"
    )
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = (tmp_path / "alertmanager.log").read_text(errors="replace")
                pytest.fail(f"alertmanager did not become ready: {err[-2000:]}")
            time.sleep(0.1)  # polling a starting subprocess: no event to wait on
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _shape(value):  # type: ignore[no-untyped-def]
    """Keys and value formats, not values: what a consumer of the payload relies on."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, str) and RFC3339.match(value):
        return "time"
    return type(value).__name__


def test_alertmanager_delivers_pushed_alerts_with_the_same_payload_shape_as_governor(
    store, clock, recorder, alertmanager
):
    clock.set(time.time())  # Alertmanager judges endsAt against its own wall clock
    receivers = [
        {"name": "am", "kind": "alertmanager", "url": alertmanager},
        {"name": "hook", "kind": "webhook", "url": recorder.url + "/from-governor"},
    ]
    routes = [
        {"receiver": "am", "continue": True},
        {"receiver": "hook", "group_wait_s": 0, "group_interval_s": 1},
    ]
    h = Harness(store, clock, alerting(receivers, routes, resend_delay_s=0))
    s = sig(pool="chat-8b")
    h.step([s])

    arrived = recorder.wait_for(2, timeout=30)
    by_path = {r.path: r.json for r in arrived}
    assert set(by_path) == {"/from-alertmanager", "/from-governor"}
    am, gov = by_path["/from-alertmanager"], by_path["/from-governor"]

    assert am["status"] == "firing" and am["version"] == "4"
    (am_alert,) = am["alerts"]
    (gov_alert,) = gov["alerts"]
    assert am_alert["labels"] == s.labels == gov_alert["labels"]
    assert am_alert["annotations"] == s.annotations
    # Same fingerprint algorithm as Alertmanager's.
    assert am_alert["fingerprint"] == fingerprint(s.labels) == gov_alert["fingerprint"]
    assert am_alert["startsAt"] == gov_alert["startsAt"]
    assert am_alert["endsAt"] == gov_alert["endsAt"] == "0001-01-01T00:00:00Z"  # while firing
    assert am_alert["generatorURL"] == gov_alert["generatorURL"]
    # Same fields, same value formats.
    assert _shape(gov) == _shape(am)
    assert GROUP_KEY.match(am["groupKey"]) and GROUP_KEY.match(gov["groupKey"])
    assert am["groupLabels"] == gov["groupLabels"]
    assert am["commonLabels"] == gov["commonLabels"]

    # The resolve travels through Alertmanager too.
    clock.set(time.time())
    h.engine.process([], clock.now())
    h.engine.tick(clock.now())
    resolved_at = clock.now()
    h.engine.tick(resolved_at + 1.0)  # Governor's group_interval (1 s) has surely passed
    arrived = recorder.wait_for(4, timeout=30)
    by_path = {r.path: r.json for r in arrived[2:]}
    assert set(by_path) == {"/from-alertmanager", "/from-governor"}
    am, gov = by_path["/from-alertmanager"], by_path["/from-governor"]
    assert am["status"] == gov["status"] == "resolved"
    assert am["alerts"][0]["status"] == gov["alerts"][0]["status"] == "resolved"
    # endsAt is the resolve time Governor pushed, in both.
    assert am["alerts"][0]["endsAt"] == gov["alerts"][0]["endsAt"] == rfc3339(resolved_at)
    assert _shape(gov) == _shape(am)
    h.close()
