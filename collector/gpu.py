"""The NVML sampler: per GPU and MIG device readings through an injected ``pynvml`` module.

NVML is initialised once per process (``open``) and shut down once (``close``). Each field
is read on its own: ``NVMLError_NotSupported`` leaves that field missing (and the field is
not asked again for that device), any other NVML error on a field is counted and the rest
keep flowing, and ``NVMLError_GpuIsLost`` marks the device unhealthy. XID critical errors
arrive through an NVML event set waited on in a thread of their own (``XidWatcher``), not by
polling; ``NVMLError_Timeout`` from the wait is the normal "nothing happened".
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from collector.errors import NvmlUnavailable
from collector.records import GpuSample

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """One reading of one GPU or MIG device, in base units (bytes, W, J, C, MHz, 0..1)."""

    index: int
    uuid: str
    name: str
    mig_profile: str = ""
    simulated: bool = False
    healthy: bool = True
    utilization: float | None = None
    memory_utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    memory_temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    clock_event_reasons: int | None = None
    ecc_uncorrected: int | None = None
    remapped_correctable: int | None = None
    remapped_uncorrectable: int | None = None
    remapped_pending: bool | None = None
    remap_failure: bool | None = None
    processes: tuple[GpuProcess, ...] | None = None
    last_xid: int | None = None
    xid_counts: tuple[tuple[int, int], ...] = ()  # (xid, count) since the agent started

    def to_sample(self, ts: float, node: str, *, pool: str = "", replica: str = "") -> GpuSample:
        return GpuSample(
            ts=datetime.fromtimestamp(ts, tz=UTC),
            node=node,
            gpu=self.index,
            uuid=self.uuid,
            name=self.name,
            mig_profile=self.mig_profile,
            pool=pool,
            replica=replica,
            source="sim" if self.simulated else "nvml",
            healthy=self.healthy,
            utilization=self.utilization,
            memory_used_bytes=self.memory_used_bytes,
            memory_total_bytes=self.memory_total_bytes,
            power_w=self.power_w,
            power_limit_w=self.power_limit_w,
            energy_j=self.energy_j,
            temperature_c=self.temperature_c,
            memory_temperature_c=self.memory_temperature_c,
            sm_clock_mhz=self.sm_clock_mhz,
            memory_clock_mhz=self.memory_clock_mhz,
            clock_event_reasons=self.clock_event_reasons,
            ecc_uncorrected=self.ecc_uncorrected,
            remapped_rows_pending=None
            if self.remapped_pending is None
            else int(self.remapped_pending),
            last_xid=self.last_xid,
        )


class GpuSource(Protocol):
    """What the agent serves: real NVML devices or simulated ones."""

    def open(self) -> None: ...

    def sample(self) -> list[DeviceReading]: ...

    def close(self) -> None: ...

    def errors(self) -> dict[tuple[str, str], int]: ...


@dataclass
class _Device:
    handle: Any
    index: int
    uuid: str
    name: str
    mig_profile: str = ""
    broken: bool = False  # could not be opened at start: always reported unhealthy
    unsupported: set[str] = field(default_factory=set)


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__


def mig_profile_from_name(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3 MIG 1g.10gb"`` -> ``"1g.10gb"``."""
    head, sep, tail = name.rpartition(" MIG ")
    return tail.strip() if sep else ""


class NvmlSampler:
    """Reads every GPU (and MIG device) through ``nvml``: a ``pynvml``-compatible module."""

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self.nvml = nvml
        self.devices: list[_Device] = []
        self._errors: dict[tuple[str, str], int] = {}
        self._opened = False
        self._lock = threading.Lock()
        self._xid_last: dict[str, int] = {}
        self._xid_counts: dict[str, dict[int, int]] = {}

    # --- lifecycle ------------------------------------------------------------------

    def open(self) -> None:
        if self._opened:
            return
        nv = self.nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise NvmlUnavailable(f"{_error_name(exc)}: {exc}") from exc
        self._opened = True
        try:
            self.devices = self._enumerate()
        except nv.NVMLError as exc:
            self.close()
            raise NvmlUnavailable(f"{_error_name(exc)}: {exc}") from exc

    def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError as exc:
            log.warning("nvmlShutdown failed: %s", exc)

    def _enumerate(self) -> list[_Device]:
        nv = self.nvml
        out: list[_Device] = []
        for i in range(nv.nvmlDeviceGetCount()):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                dev = _Device(h, i, nv.nvmlDeviceGetUUID(h), nv.nvmlDeviceGetName(h))
            except nv.NVMLError as exc:
                # A GPU lost or broken at start is served as unhealthy; the others still are.
                log.error("GPU %s cannot be opened: %s: %s", i, _error_name(exc), exc)
                self._count("identity", exc)
                out.append(_Device(None, i, "", "", broken=True))
                continue
            out.append(dev)
            try:
                out.extend(self._mig_devices(dev))
            except nv.NVMLError as exc:
                log.error("GPU %s: MIG devices cannot be listed: %s", i, exc)
                self._count("mig", exc)
        return out

    def _mig_devices(self, dev: _Device) -> list[_Device]:
        nv = self.nvml
        try:
            mig_on = nv.nvmlDeviceGetMigMode(dev.handle)[0] == nv.NVML_DEVICE_MIG_ENABLE
        except nv.NVMLError:
            return []  # not a MIG-capable GPU
        if not mig_on:
            return []
        out = []
        for j in range(nv.nvmlDeviceGetMaxMigDeviceCount(dev.handle)):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(dev.handle, j)
            except nv.NVMLError_NotFound:
                continue  # empty slot
            name = nv.nvmlDeviceGetName(mh)
            out.append(
                _Device(
                    mh, dev.index, nv.nvmlDeviceGetUUID(mh), dev.name, mig_profile_from_name(name)
                )
            )
        return out

    def errors(self) -> dict[tuple[str, str], int]:
        """NVML errors by (field, error class name) since start, NotSupported included once."""
        with self._lock:
            return dict(self._errors)

    def handles_by_uuid(self) -> dict[str, Any]:
        return {d.uuid: d.handle for d in self.devices if not d.mig_profile and not d.broken}

    # --- XID bookkeeping (fed by XidWatcher) ----------------------------------------

    def record_xid(self, uuid: str, xid: int) -> None:
        with self._lock:
            self._xid_last[uuid] = xid
            counts = self._xid_counts.setdefault(uuid, {})
            counts[xid] = counts.get(xid, 0) + 1

    # --- sampling -------------------------------------------------------------------

    def _count(self, fld: str, exc: BaseException) -> None:
        key = (fld, _error_name(exc))
        with self._lock:
            self._errors[key] = self._errors.get(key, 0) + 1

    def sample(self) -> list[DeviceReading]:
        return [self._read(d) for d in self.devices]

    def _read(self, dev: _Device) -> DeviceReading:
        if dev.broken:
            return DeviceReading(index=dev.index, uuid=dev.uuid, name=dev.name, healthy=False)
        nv = self.nvml
        h = dev.handle
        values: dict[str, Any] = {}
        healthy = True

        def read(fld: str, fn: Callable[[], Any]) -> Any:
            nonlocal healthy
            if not healthy or fld in dev.unsupported:
                return None
            try:
                return fn()
            except nv.NVMLError_NotSupported as exc:
                dev.unsupported.add(fld)  # a property of the device: do not ask again
                self._count(fld, exc)
            except nv.NVMLError_GpuIsLost as exc:
                healthy = False
                self._count(fld, exc)
                log.error("GPU %s (%s) is lost", dev.index, dev.uuid)
            except nv.NVMLError as exc:
                self._count(fld, exc)
            return None

        util = read("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            values["utilization"] = util.gpu / 100.0
            values["memory_utilization"] = util.memory / 100.0
        mem = read("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2))
        if mem is not None:
            values["memory_used_bytes"] = int(mem.used)
            values["memory_total_bytes"] = int(mem.total)
        mw = read("power", lambda: nv.nvmlDeviceGetPowerUsage(h))
        values["power_w"] = None if mw is None else mw / 1000.0
        lim = read("power_limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
        values["power_limit_w"] = None if lim is None else lim / 1000.0
        mj = read("energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))
        values["energy_j"] = None if mj is None else mj / 1000.0
        values["temperature_c"] = _float(
            read("temperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        )
        values["memory_temperature_c"] = _float(
            read("memory_temperature", lambda: self._field_value(h, nv.NVML_FI_DEV_MEMORY_TEMP))
        )
        values["sm_clock_mhz"] = _float(
            read("sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        )
        values["memory_clock_mhz"] = _float(
            read("memory_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
        )
        values["clock_event_reasons"] = read(
            "clock_event_reasons", lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h)
        )
        values["ecc_uncorrected"] = read(
            "ecc_uncorrected",
            lambda: nv.nvmlDeviceGetTotalEccErrors(
                h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            ),
        )
        rows = read("remapped_rows", lambda: nv.nvmlDeviceGetRemappedRows(h))
        if rows is not None:
            corr, unc, pending, failure = rows
            values.update(
                remapped_correctable=int(corr),
                remapped_uncorrectable=int(unc),
                remapped_pending=bool(pending),
                remap_failure=bool(failure),
            )
        procs = read("processes", lambda: nv.nvmlDeviceGetComputeRunningProcesses(h))
        if procs is not None:
            values["processes"] = tuple(
                GpuProcess(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                for p in procs
            )
        with self._lock:
            last = self._xid_last.get(dev.uuid)
            counts = tuple(sorted(self._xid_counts.get(dev.uuid, {}).items()))
        return DeviceReading(
            index=dev.index,
            uuid=dev.uuid,
            name=dev.name,
            mig_profile=dev.mig_profile,
            healthy=healthy,
            last_xid=last,
            xid_counts=counts,
            **values,
        )

    def _field_value(self, h: Any, field_id: int) -> float:
        nv = self.nvml
        (fv,) = nv.nvmlDeviceGetFieldValues(h, [field_id])
        if fv.nvmlReturn != nv.NVML_SUCCESS:
            raise nv.NVMLError(fv.nvmlReturn)  # the per-field error, as a pynvml exception
        member = {
            nv.NVML_VALUE_TYPE_DOUBLE: "dVal",
            nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
            nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
            nv.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        }.get(fv.valueType, "uiVal")
        return float(getattr(fv.value, member))


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


class XidWatcher:
    """Waits on an NVML event set for XID critical errors and hands them to ``on_xid``."""

    def __init__(
        self,
        nvml: Any,
        handles_by_uuid: dict[str, Any],
        on_xid: Callable[[str, int], None],
        *,
        wait_ms: int = 500,
    ) -> None:
        self.nvml = nvml
        self._handles = handles_by_uuid
        self._on_xid = on_xid
        self._wait_ms = wait_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._set: Any = None
        self.registered: list[str] = []

    def start(self) -> None:
        nv = self.nvml
        try:
            self._set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            log.warning("XID events unavailable: %s", exc)
            return
        for uuid, h in self._handles.items():
            try:
                nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, self._set)
                self.registered.append(uuid)
            except nv.NVMLError as exc:  # NotSupported on some boards / vGPU
                log.warning("GPU %s: XID events not available: %s", uuid, exc)
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nv = self.nvml
        while not self._stop.is_set():
            try:
                data = nv.nvmlEventSetWait(self._set, self._wait_ms)
            except nv.NVMLError_Timeout:
                continue  # normal: no event in this window
            except nv.NVMLError as exc:
                log.error("waiting for NVML events failed: %s", exc)
                self._stop.wait(1.0)
                continue
            try:
                uuid = nv.nvmlDeviceGetUUID(data.device)
            except nv.NVMLError as exc:
                log.error("XID %s on an unidentifiable device: %s", data.eventData, exc)
                continue
            log.warning("GPU %s: XID %s", uuid, data.eventData)
            self._on_xid(uuid, int(data.eventData))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._set)
            except self.nvml.NVMLError as exc:
                log.warning("nvmlEventSetFree failed: %s", exc)
            self._set = None


class NvmlSource:
    """The real source for the agent: sampler plus XID watcher over one NVML session."""

    def __init__(self, nvml: Any = None, *, xid_wait_ms: int = 500) -> None:
        self.sampler = NvmlSampler(nvml)
        self._xid_wait_ms = xid_wait_ms
        self._watcher: XidWatcher | None = None

    def open(self) -> None:
        self.sampler.open()
        self._watcher = XidWatcher(
            self.sampler.nvml,
            self.sampler.handles_by_uuid(),
            self.sampler.record_xid,
            wait_ms=self._xid_wait_ms,
        )
        self._watcher.start()

    def sample(self) -> list[DeviceReading]:
        return self.sampler.sample()

    def errors(self) -> dict[tuple[str, str], int]:
        return self.sampler.errors()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.sampler.close()


def default_node() -> str:
    return socket.gethostname()


class Poller:
    """Samples a source every ``interval_s`` in a thread; ``latest()`` is the last reading."""

    def __init__(
        self, source: GpuSource, interval_s: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self._clock = clock
        self._latest: list[DeviceReading] = []
        self._at: float | None = None
        self._duration: float | None = None
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[DeviceReading]:
        started = time.perf_counter()
        readings = self.source.sample()
        with self._lock:
            self._latest = readings
            self._at = self._clock()
            self._duration = time.perf_counter() - started
            self.samples += 1
        return readings

    def latest(self) -> tuple[list[DeviceReading], float | None, float | None]:
        with self._lock:
            return list(self._latest), self._at, self._duration

    def start(self) -> None:
        self.poll()  # serve real values from the first scrape on
        self._thread = threading.Thread(target=self._run, name="gpu-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # keep serving the last reading
                log.exception("GPU sampling failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
