"""A fake ``pynvml`` module (nvidia-ml-py) for machines without an NVIDIA driver.

Faithful where the sampler can tell the difference:
- the same function names and signatures as nvidia-ml-py 12/13 for what Governor calls;
- the *real* return types: ``c_nvmlMemory_v2_t``, ``c_nvmlUtilization_t``,
  ``c_nvmlEventData_t``, ``c_nvmlFieldValue_t`` arrays, ``nvmlFriendlyObject`` processes,
  device handles that are real ``c_nvmlDevice_t`` pointers, strings returned as ``str``;
- NVML's units: milliwatts, millijoules, MHz, bytes, percent;
- the *real* exception classes, raised the way pynvml raises them
  (``NVMLError(NVML_ERROR_NOT_SUPPORTED)`` becomes an ``NVMLError_NotSupported``), and
  ``NVMLError_Uninitialized`` for any call before ``nvmlInit``.
Constants, structs and exception classes are taken from the installed nvidia-ml-py; only
the functions that would reach the driver are replaced. Functions the fake does not
implement raise ``AttributeError`` instead of silently reaching the real library.

Values are real H100 SXM figures (REFERENCE.md: nvidia_gpu_exporter captures, driver
590.48.01): 81559 MiB total with 479 MiB reserved, 700 W limit, 69.9 W idle, SM clock
345 idle / 1980 max MHz, memory clock 2619 MHz, 41/59 C GPU, 48/55 C memory.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

MIB = 1024 * 1024
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_TOTAL = 81559 * MIB
H100_RESERVED = 479 * MIB


def _err(code: int) -> Exception:
    # Exactly what pynvml's _nvmlCheckReturn does: the base class maps to the subclass.
    return _real.NVMLError(code)


@dataclass
class FakeMig:
    profile: str  # "1g.10gb"
    uuid: str
    memory_total: int
    memory_used: int
    gpu_instance_id: int


@dataclass
class FakeGpu:
    index: int
    uuid: str
    name: str = H100_NAME
    memory_total: int = H100_TOTAL
    memory_reserved: int = H100_RESERVED
    memory_used: int = 74817 * MIB
    util_gpu: int = 97  # percent
    util_memory: int = 61
    power_mw: int = 386214
    power_limit_mw: int = 700000
    energy_mj: int = 1873551946227
    temperature: int = 59
    memory_temperature: int = 55
    sm_clock: int = 1980
    memory_clock: int = 2619
    clock_event_reasons: int = 0
    ecc_uncorrected: int = 0
    remapped: tuple[int, int, int, int] = (0, 0, 0, 0)  # corr, unc, pending, failure
    processes: list[tuple[int, int]] = field(default_factory=lambda: [(48213, 73400 * MIB)])
    mig_mode: int | None = _real.NVML_DEVICE_MIG_DISABLE  # None: MIG not supported
    migs: list[FakeMig] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # function names -> NotSupported
    lost: bool = False  # every call -> GpuIsLost
    calls: dict[str, int] = field(default_factory=dict)


def h100(index: int, **overrides: Any) -> FakeGpu:
    uuid = overrides.pop("uuid", f"GPU-927d7444-b45a-7c49-8402-5e686e46a0{index:02d}")
    return FakeGpu(index=index, uuid=uuid, **overrides)


def h100_idle(index: int, **overrides: Any) -> FakeGpu:
    values: dict[str, Any] = dict(
        memory_used=0,
        util_gpu=0,
        util_memory=0,
        power_mw=69900,
        sm_clock=345,
        temperature=41,
        memory_temperature=48,
        processes=[],
        clock_event_reasons=_real.nvmlClocksEventReasonGpuIdle,
    )
    values.update(overrides)
    return h100(index, **values)


class FakeNvml(types.ModuleType):
    """``FakeNvml([h100(0), h100(1)])`` stands where ``import pynvml`` would."""

    def __init__(self, gpus: list[FakeGpu], *, library_found: bool = True) -> None:
        super().__init__("pynvml")
        self.gpus = gpus
        self.library_found = library_found
        self.initialized = 0
        self.init_calls = 0
        self.shutdown_calls = 0
        self._handles: dict[int, tuple[FakeGpu, FakeMig | None]] = {}
        self._keep: list[Any] = []  # keeps ctypes structs alive behind the handles
        self._gpu_handle: dict[int, Any] = {}
        self._events: queue.Queue[tuple[FakeGpu, int]] = queue.Queue()
        self._registered: set[int] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        # Constants, structs and exception classes come from the real module.
        value = getattr(_real, name)
        if isinstance(value, types.FunctionType):
            raise AttributeError(f"the fake pynvml does not implement {name}")
        return value

    # --- handles --------------------------------------------------------------------

    def _new_handle(self, gpu: FakeGpu, mig: FakeMig | None) -> Any:
        struct = _real.struct_c_nvmlDevice_t()
        self._keep.append(struct)
        handle = ctypes.pointer(struct)
        self._handles[ctypes.addressof(struct)] = (gpu, mig)
        return handle

    def _resolve(self, handle: Any, fn: str) -> tuple[FakeGpu, FakeMig | None]:
        if not self.initialized:
            raise _err(_real.NVML_ERROR_UNINITIALIZED)
        try:
            gpu, mig = self._handles[ctypes.addressof(handle.contents)]
        except (KeyError, AttributeError, ValueError):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT) from None
        gpu.calls[fn] = gpu.calls.get(fn, 0) + 1
        if gpu.lost:
            raise _err(_real.NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.unsupported:
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu, mig

    def _check_init(self) -> None:
        if not self.initialized:
            raise _err(_real.NVML_ERROR_UNINITIALIZED)

    # --- library --------------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.init_calls += 1
        if not self.library_found:
            raise _err(_real.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialized += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._check_init()
        self.shutdown_calls += 1
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._check_init()
        return "590.48.01"

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:  # noqa: N802
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if index not in self._gpu_handle:
            self._gpu_handle[index] = self._new_handle(self.gpus[index], None)
        return self._gpu_handle[index]

    # --- identity and MIG -----------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
        gpu, mig = self._resolve(handle, "nvmlDeviceGetUUID")
        return mig.uuid if mig else gpu.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:  # noqa: N802
        gpu, mig = self._resolve(handle, "nvmlDeviceGetName")
        # Real MIG device names read "NVIDIA H100 80GB HBM3 MIG 1g.10gb".
        return f"{gpu.name} MIG {mig.profile}" if mig else gpu.name

    def nvmlDeviceGetIndex(self, handle: Any) -> int:  # noqa: N802
        gpu, _ = self._resolve(handle, "nvmlDeviceGetIndex")
        return gpu.index

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:  # noqa: N802
        gpu, _ = self._resolve(handle, "nvmlDeviceGetMigMode")
        if gpu.mig_mode is None:
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:  # noqa: N802
        self._resolve(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return 7  # H100: up to seven 1g instances

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:  # noqa: N802
        gpu, _ = self._resolve(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if index >= len(gpu.migs):
            raise _err(_real.NVML_ERROR_NOT_FOUND)
        return self._new_handle(gpu, gpu.migs[index])

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:  # noqa: N802
        _, mig = self._resolve(handle, "nvmlDeviceGetGpuInstanceId")
        if mig is None:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return mig.gpu_instance_id

    # --- readings -------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:  # noqa: N802
        gpu, mig = self._resolve(handle, "nvmlDeviceGetUtilizationRates")
        if mig is not None:  # N/A under MIG
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        u = _real.c_nvmlUtilization_t()
        u.gpu, u.memory = gpu.util_gpu, gpu.util_memory
        return u

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:  # noqa: N802
        gpu, mig = self._resolve(handle, "nvmlDeviceGetMemoryInfo")
        total = mig.memory_total if mig else gpu.memory_total
        used = mig.memory_used if mig else gpu.memory_used
        if version:
            m = _real.c_nvmlMemory_v2_t()
            m.version = version
            m.reserved = 0 if mig else gpu.memory_reserved
        else:
            m = _real.c_nvmlMemory_t()
        m.total, m.used = total, used
        m.free = total - used - (0 if mig or not version else gpu.memory_reserved)
        return m

    def _gpu_only(self, handle: Any, fn: str) -> FakeGpu:
        gpu, mig = self._resolve(handle, fn)
        if mig is not None:
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:  # noqa: N802
        return self._gpu_only(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:  # noqa: N802
        return self._gpu_only(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:  # noqa: N802
        return self._gpu_only(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:  # noqa: N802
        gpu = self._gpu_only(handle, "nvmlDeviceGetTemperature")
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[int]) -> Any:  # noqa: N802,N803
        gpu = self._gpu_only(handle, "nvmlDeviceGetFieldValues")
        values = (_real.c_nvmlFieldValue_t * len(fieldIds))()
        for i, fid in enumerate(fieldIds):
            values[i].fieldId = fid
            if fid == _real.NVML_FI_DEV_MEMORY_TEMP and "memory_temperature" not in gpu.unsupported:
                values[i].nvmlReturn = _real.NVML_SUCCESS
                values[i].valueType = _real.NVML_VALUE_TYPE_UNSIGNED_INT
                values[i].value.uiVal = gpu.memory_temperature
            else:
                # Per-field failures come back in nvmlReturn; the call itself succeeds.
                values[i].nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:  # noqa: N802,A002
        gpu = self._gpu_only(handle, "nvmlDeviceGetClockInfo")
        if type == _real.NVML_CLOCK_SM:
            return gpu.sm_clock
        if type == _real.NVML_CLOCK_MEM:
            return gpu.memory_clock
        raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:  # noqa: N802
        return self._gpu_only(handle, "nvmlDeviceGetCurrentClocksEventReasons").clock_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:  # noqa: N802,N803
        gpu = self._gpu_only(handle, "nvmlDeviceGetTotalEccErrors")
        if errorType != _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return 0
        return gpu.ecc_uncorrected

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:  # noqa: N802
        return self._gpu_only(device, "nvmlDeviceGetRemappedRows").remapped

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802
        gpu, mig = self._resolve(handle, "nvmlDeviceGetComputeRunningProcesses")
        if mig is not None:
            return []
        return [
            _real.nvmlFriendlyObject(
                {
                    "pid": pid,
                    "usedGpuMemory": used,
                    "gpuInstanceId": 0xFFFFFFFF,
                    "computeInstanceId": 0xFFFFFFFF,
                }
            )
            for pid, used in gpu.processes
        ]

    # --- events ---------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:  # noqa: N802
        self._check_init()
        struct = _real.struct_c_nvmlEventSet_t()
        self._keep.append(struct)
        return ctypes.pointer(struct)

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:  # noqa: N802,N803
        gpu, _ = self._resolve(handle, "nvmlDeviceRegisterEvents")
        if eventTypes & _real.nvmlEventTypeXidCriticalError:
            with self._lock:
                self._registered.add(gpu.index)

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any:  # noqa: N802,N803
        self._check_init()
        try:
            gpu, xid = self._events.get(timeout=timeoutms / 1000.0)
        except queue.Empty:
            raise _err(_real.NVML_ERROR_TIMEOUT) from None
        data = _real.c_nvmlEventData_t()
        data.device = self.nvmlDeviceGetHandleByIndex(gpu.index)
        data.eventType = _real.nvmlEventTypeXidCriticalError
        data.eventData = xid
        data.gpuInstanceId = 0xFFFFFFFF
        data.computeInstanceId = 0xFFFFFFFF
        return data

    def nvmlEventSetFree(self, eventSet: Any) -> None:  # noqa: N802,N803
        self._check_init()

    # --- test controls (not part of pynvml) -----------------------------------------

    def inject_xid(self, index: int, xid: int) -> None:
        """Deliver an XID critical error event for GPU ``index`` (if registered)."""
        with self._lock:
            registered = index in self._registered
        if registered:
            self._events.put((self.gpus[index], xid))

    def registered(self) -> set[int]:
        with self._lock:
            return set(self._registered)
