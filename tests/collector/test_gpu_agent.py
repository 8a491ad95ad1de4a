"""``governor agent``: Prometheus output promtool accepts, read back by the scraper."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pynvml
import pytest
from prometheus_client import generate_latest

from collector import gpu_names as gn
from collector.gpu import NvmlSource
from collector.gpu_metrics import AgentServer
from collector.gpu_sim import SimulatedGpus
from collector.scrape_adapters import adapter_for
from collector.scrape_parse import parse
from collector.scrape_rates import CounterRates
from collector.scrape_targets import Target
from controlplane.commands.agent_cmd import parse_interval
from controlplane.errors import ConfigError
from tests.conftest import require_binary
from tests.fakes.pynvml_fake import MIB, FakeMig, FakeNvml, h100, h100_idle

GOVERNOR = [sys.executable, "-m", "controlplane.cli"]


def promtool_check(text: str) -> None:
    promtool = require_binary("promtool", "prometheus")
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
        res.stdout + res.stderr
    )


def fake_fleet() -> FakeNvml:
    mig = h100(
        2,
        mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
        migs=[
            FakeMig("1g.10gb", "MIG-7f1d9e0b-2c4a-5b6d-8e9f-0a1b2c3d4e5f", 9856 * MIB, 24 * MIB, 9)
        ],
    )
    return FakeNvml(
        [
            h100(0, clock_event_reasons=pynvml.nvmlClocksEventReasonSwPowerCap),
            h100_idle(1, unsupported={"nvmlDeviceGetTotalEnergyConsumption"}),
            mig,
            h100(3),
        ]
    )


def served(fake: FakeNvml) -> tuple[AgentServer, str]:
    server = AgentServer(
        NvmlSource(fake, xid_wait_ms=10), node="gpu-node-7", port=0, interval_s=3600
    )
    server.start()
    return server, server.url


def test_agent_output_over_http_passes_promtool_and_reads_back_into_rows():
    fake = fake_fleet()
    server, url = served(fake)
    try:
        fake.gpus[3].lost = True
        server.poller.poll()
        resp = httpx.get(url, timeout=10)
    finally:
        server.stop()
    assert resp.status_code == 200
    text = resp.text
    # What is served, by name and in base units (not through our own adapter, which
    # shares the names and scale factors): the H100's NVML readings of REFERENCE.md.
    served_g0 = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^(governor_gpu_\w+)\{gpu="0",mig_profile="",[^}]*\} (\S+)$',
                             text, re.MULTILINE)
    }  # fmt: skip
    assert served_g0["governor_gpu_power_watts"] == pytest.approx(386.214)  # NVML: mW
    assert served_g0["governor_gpu_sm_clock_hertz"] == 1.98e9  # NVML: MHz
    assert served_g0["governor_gpu_energy_joules_total"] == pytest.approx(1873551946.227)  # mJ
    assert served_g0["governor_gpu_memory_total_bytes"] == 81559 * MIB
    assert served_g0["governor_gpu_temperature_celsius"] == 59.0
    assert not re.search(r'^governor_gpu_power_watts\{gpu="3"', text, re.MULTILINE)  # lost
    promtool_check(text)
    rows = adapter_for("agent").records(
        parse(text, resp.headers["content-type"]),
        Target(url, "agent", pool="chat"),
        1_763_500_000.0,
        CounterRates(),
    )
    by = {(r.gpu, r.mig_profile): r for r in rows}
    assert sorted(by) == [(0, ""), (1, ""), (2, ""), (2, "1g.10gb"), (3, "")]
    g0 = by[(0, "")]
    assert (g0.node, g0.pool, g0.source, g0.healthy) == ("gpu-node-7", "chat", "agent", True)
    assert g0.power_w == pytest.approx(386.214) and g0.power_limit_w == 700.0
    assert g0.memory_total_bytes == 81559 * MIB and g0.utilization == pytest.approx(0.97)
    assert g0.sm_clock_mhz == pytest.approx(1980.0)  # served in Hz, read back in MHz
    assert g0.energy_j == pytest.approx(1873551946.227)
    assert g0.clock_event_reasons == pynvml.nvmlClocksEventReasonSwPowerCap
    assert by[(1, "")].energy_j is None and by[(1, "")].temperature_c == 41.0
    assert by[(2, "1g.10gb")].memory_used_bytes == 24 * MIB
    assert by[(3, "")].healthy is False
    assert (
        'governor_gpu_clock_event_active{gpu="0",mig_profile="",name="NVIDIA H100 80GB '
        'HBM3",node="gpu-node-7",reason="sw_power_cap",simulated="false",uuid='
    ) in text
    # GPU 1 and the MIG device do not support the energy counter: counted once each.
    assert (
        'governor_agent_nvml_errors_total{error="NVMLError_NotSupported",field="energy"} 2.0'
        in text
    )


def test_xid_counts_are_exported_per_xid():
    fake = FakeNvml([h100(0)])
    server, _ = served(fake)
    try:
        fake.inject_xid(0, 79)
        for _ in range(500):
            server.poller.poll()
            if server.poller.latest()[0][0].last_xid == 79:
                break
            server.poller._stop.wait(0.01)
        text = generate_latest(server.registry).decode()
    finally:
        server.stop()
    assert f'{gn.XID_ERRORS}_total{{gpu="0"' in text and 'xid="79"} 1.0' in text
    assert re.search(rf'^{gn.LAST_XID}\{{gpu="0"[^}}]*\}} 79\.0$', text, re.MULTILINE)
    promtool_check(text)


@pytest.mark.slow
def test_governor_agent_simulated_gpus_8_passes_promtool(tmp_path):
    with subprocess.Popen(
        [
            *GOVERNOR,
            "agent",
            "--simulated-gpus",
            "8",
            "--port",
            "0",
            "--interval",
            "200ms",
            "--node",
            "demo-node",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            line = proc.stdout.readline()
            assert "serving 8 simulated GPUs on http://127.0.0.1:" in line, line
            url = line.split(" on ")[1].split()[0]
            text = httpx.get(url, timeout=10).text
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(20)
    assert rc == 0
    promtool_check(text)
    info = [ln for ln in text.splitlines() if ln.startswith(gn.INFO + "{")]
    assert len(info) == 8
    assert all('simulated="true"' in ln and 'name="Simulated NVIDIA H100' in ln for ln in info)
    rows = adapter_for("agent").records(parse(text), Target(url, "agent"), 0.0, CounterRates())
    assert len(rows) == 8 and {r.source for r in rows} == {"sim"}
    assert all(69.9 <= r.power_w <= 400 and r.power_limit_w == 700 for r in rows)


def test_governor_agent_without_a_driver_exits_non_zero_with_one_line():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present on this machine")
    res = subprocess.run(
        [*GOVERNOR, "agent", "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: NVML unavailable: NVMLError_LibraryNotFound")
    assert res.stdout == ""


def test_simulated_devices_are_labelled_and_move_with_the_clock():
    t = [1_763_500_000.0]
    sim = SimulatedGpus(2, clock=lambda: t[0])
    sim.open()
    a = sim.sample()
    t[0] += 60
    b = sim.sample()
    assert all(r.simulated and r.name.startswith("Simulated ") for r in a + b)
    # Energy grows by power x time, as a real counter does.
    assert b[0].energy_j - a[0].energy_j == pytest.approx(b[0].power_w * 60, rel=1e-4)
    with pytest.raises(ValueError, match="at least 1"):
        SimulatedGpus(0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("1s", 1.0, id="seconds"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("2m", 120.0, id="minutes"),
        pytest.param("3", 3.0, id="a bare number is seconds"),
    ],
)
def test_interval_durations(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["0s", "fast", "-1s", "1h"])
def test_bad_intervals_are_config_errors(text):
    with pytest.raises(ConfigError, match="--interval"):
        parse_interval(text)
