"""The NVML sampler over a fake pynvml faithful to nvidia-ml-py, with real H100 values."""

from __future__ import annotations

import threading

import pynvml
import pytest

from collector.errors import NvmlUnavailable
from collector.gpu import NvmlSampler, NvmlSource, XidWatcher
from tests.fakes.pynvml_fake import MIB, FakeMig, FakeNvml, h100, h100_idle


def test_h100_readings_in_base_units():
    nv = FakeNvml([h100(0, processes=[(48213, 73400 * MIB)], remapped=(2, 1, 1, 0))])
    s = NvmlSampler(nv)
    s.open()
    (r,) = s.sample()
    assert (r.index, r.name, r.uuid, r.mig_profile) == (
        0,
        "NVIDIA H100 80GB HBM3",
        "GPU-927d7444-b45a-7c49-8402-5e686e46a000",
        "",
    )
    assert r.healthy and not r.simulated
    assert r.utilization == pytest.approx(0.97) and r.memory_utilization == pytest.approx(0.61)
    assert r.memory_total_bytes == 81559 * MIB and r.memory_used_bytes == 74817 * MIB
    assert (r.power_w, r.power_limit_w) == (pytest.approx(386.214), 700.0)  # mW -> W
    assert r.energy_j == pytest.approx(1873551946.227)  # mJ -> J
    assert (r.temperature_c, r.memory_temperature_c) == (59.0, 55.0)
    assert (r.sm_clock_mhz, r.memory_clock_mhz) == (1980.0, 2619.0)
    assert r.clock_event_reasons == 0 and r.ecc_uncorrected == 0
    assert (r.remapped_correctable, r.remapped_uncorrectable) == (2, 1)
    assert r.remapped_pending is True and r.remap_failure is False
    assert [(p.pid, p.used_memory_bytes) for p in r.processes] == [(48213, 73400 * MIB)]
    sample = r.to_sample(1_763_500_000.0, "node-a", pool="chat")
    assert (sample.source, sample.node, sample.pool, sample.remapped_rows_pending) == (
        "nvml",
        "node-a",
        "chat",
        1,
    )


def test_nvml_is_initialised_once_and_shut_down_once():
    nv = FakeNvml([h100(0), h100_idle(1)])
    s = NvmlSampler(nv)
    s.open()
    s.open()
    for _ in range(5):
        s.sample()
    s.close()
    s.close()
    assert (nv.init_calls, nv.shutdown_calls, nv.initialized) == (1, 1, 0)


@pytest.mark.parametrize(
    ("function", "field", "absent"),
    [
        pytest.param(
            "nvmlDeviceGetUtilizationRates",
            "utilization",
            ("utilization", "memory_utilization"),
            id="utilization not supported",
        ),
        pytest.param(
            "nvmlDeviceGetPowerUsage", "power", ("power_w",), id="power draw not supported"
        ),
        pytest.param(
            "nvmlDeviceGetTotalEnergyConsumption",
            "energy",
            ("energy_j",),
            id="energy counter not supported (pre-Volta)",
        ),
        pytest.param(
            "nvmlDeviceGetRemappedRows",
            "remapped_rows",
            ("remapped_correctable", "remapped_uncorrectable", "remapped_pending", "remap_failure"),
            id="row remapping not supported (pre-Ampere)",
        ),
        pytest.param(
            "nvmlDeviceGetTotalEccErrors",
            "ecc_uncorrected",
            ("ecc_uncorrected",),
            id="ECC disabled",
        ),
        pytest.param(
            "nvmlDeviceGetFieldValues",
            "memory_temperature",
            ("memory_temperature_c",),
            id="memory temperature not supported",
        ),
    ],
)
def test_a_field_that_is_not_supported_is_missing_and_the_rest_flow(function, field, absent):
    gpu = h100(0, unsupported={function})
    nv = FakeNvml([gpu])
    s = NvmlSampler(nv)
    s.open()
    for _ in range(3):
        (r,) = s.sample()
    for attr in absent:
        assert getattr(r, attr) is None, attr
    assert r.healthy
    assert r.temperature_c == 59.0 and r.memory_used_bytes == 74817 * MIB
    assert gpu.calls[function] == 1  # a property of the device: asked once, not every sample
    assert s.errors() == {(field, "NVMLError_NotSupported"): 1}


def test_memory_temperature_not_supported_inside_field_values_is_missing_too():
    nv = FakeNvml([h100(0, unsupported={"memory_temperature"})])
    s = NvmlSampler(nv)
    s.open()
    (r,) = s.sample()
    assert r.memory_temperature_c is None and r.temperature_c == 59.0


def test_a_lost_gpu_is_unhealthy_and_the_others_keep_reporting():
    lost = h100(1, lost=False)
    nv = FakeNvml([h100(0), lost])
    s = NvmlSampler(nv)
    s.open()
    lost.lost = True  # fell off the bus after start
    ok, gone = s.sample()
    assert ok.healthy and ok.power_w == pytest.approx(386.214)
    assert gone.healthy is False and gone.power_w is None and gone.uuid == lost.uuid
    assert s.errors()[("utilization", "NVMLError_GpuIsLost")] == 1
    assert lost.calls["nvmlDeviceGetUtilizationRates"] == 1
    assert "nvmlDeviceGetPowerUsage" not in lost.calls  # stops at the first GpuIsLost
    lost.lost = False  # after a reset it answers again
    assert s.sample()[1].healthy


def test_a_gpu_lost_before_start_is_served_unhealthy_and_the_others_still_are():
    nv = FakeNvml([h100(0, lost=True), h100(1)])
    s = NvmlSampler(nv)
    s.open()
    lost, ok = s.sample()
    assert (lost.index, lost.healthy, lost.power_w) == (0, False, None)
    assert ok.healthy and ok.power_w == pytest.approx(386.214)
    assert s.errors()[("identity", "NVMLError_GpuIsLost")] == 1


def test_mig_devices_are_read_as_their_own_devices():
    gpu = h100(
        0,
        mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
        migs=[
            FakeMig(
                "3g.40gb", "MIG-0c2a51f2-8b0e-5a3e-9f6a-3d1c2b4a5e60", 40192 * MIB, 28117 * MIB, 2
            ),
            FakeMig("1g.10gb", "MIG-7f1d9e0b-2c4a-5b6d-8e9f-0a1b2c3d4e5f", 9856 * MIB, 24 * MIB, 9),
        ],
    )
    nv = FakeNvml([gpu, h100_idle(1, mig_mode=None)])
    s = NvmlSampler(nv)
    s.open()
    readings = s.sample()
    assert [(r.index, r.mig_profile) for r in readings] == [
        (0, ""),
        (0, "3g.40gb"),
        (0, "1g.10gb"),
        (1, ""),
    ]
    big = readings[1]
    assert big.uuid.startswith("MIG-") and big.name == "NVIDIA H100 80GB HBM3"
    assert big.utilization is None  # N/A under MIG
    assert (big.memory_used_bytes, big.memory_total_bytes) == (28117 * MIB, 40192 * MIB)
    assert big.power_w is None and readings[0].power_w == pytest.approx(386.214)


def test_no_driver_library_is_a_clear_error():
    s = NvmlSampler(FakeNvml([], library_found=False))
    with pytest.raises(NvmlUnavailable, match="^NVMLError_LibraryNotFound: NVML Shared Library"):
        s.open()


def test_the_real_pynvml_without_a_driver_says_library_not_found():
    s = NvmlSampler()  # the installed nvidia-ml-py
    try:
        s.open()
    except NvmlUnavailable as exc:
        assert str(exc).startswith(("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"))
        assert isinstance(exc.__cause__, pynvml.NVMLError)
    else:  # pragma: no cover - only on a GPU machine
        s.close()
        pytest.skip("an NVIDIA driver is present on this machine")


def test_xid_events_arrive_through_the_event_set_not_polling():
    nv = FakeNvml([h100(0), h100(1)])
    s = NvmlSampler(nv)
    s.open()
    seen: list[tuple[str, int]] = []
    got = threading.Event()

    def on_xid(uuid: str, xid: int) -> None:
        seen.append((uuid, xid))
        s.record_xid(uuid, xid)
        if len(seen) == 2:
            got.set()

    w = XidWatcher(nv, s.handles_by_uuid(), on_xid, wait_ms=20)  # many Timeouts meanwhile
    w.start()
    try:
        assert nv.registered() == {0, 1}
        nv.inject_xid(1, 79)  # GPU has fallen off the bus
        nv.inject_xid(1, 79)
        assert got.wait(5)
    finally:
        w.stop()
    uuid1 = nv.gpus[1].uuid
    assert seen == [(uuid1, 79), (uuid1, 79)]
    r0, r1 = s.sample()
    assert (r0.last_xid, r0.xid_counts) == (None, ())
    assert (r1.last_xid, r1.xid_counts) == (79, ((79, 2),))


def test_nvml_source_runs_the_watcher_over_one_session():
    nv = FakeNvml([h100(0)])
    src = NvmlSource(nv, xid_wait_ms=10)
    src.open()
    try:
        nv.inject_xid(0, 48)  # double-bit ECC error
        deadline = threading.Event()
        for _ in range(500):
            if src.sample()[0].last_xid == 48:
                break
            deadline.wait(0.01)
        assert src.sample()[0].last_xid == 48
    finally:
        src.close()
    assert (nv.init_calls, nv.shutdown_calls) == (1, 1)


def test_fake_raises_uninitialized_before_init_like_pynvml():
    nv = FakeNvml([h100(0)])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()
    with pytest.raises(AttributeError, match="does not implement"):
        nv.nvmlDeviceGetBAR1MemoryInfo  # noqa: B018
