"""Simulated GPUs for ``governor agent --simulated-gpus N``: demos and tests without a driver.

Every device says what it is: names start with ``Simulated``, UUIDs with ``GPU-51a17a7e``,
and the agent labels their series ``simulated="true"``. Figures follow a real H100 SXM
(REFERENCE.md): 81559 MiB, 700 W limit, 69.9 W idle to ~400 W under inference load,
SM clock 345-1980 MHz, memory clock 2619 MHz, 41-59 C GPU and 48-55 C memory. Load moves
slowly and deterministically with the injected clock, so two reads at one instant agree.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from collector.gpu import DeviceReading

MIB = 1024 * 1024
NAME = "Simulated NVIDIA H100 80GB HBM3"
TOTAL = 81559 * MIB
IDLE_W, PEAK_W, LIMIT_W = 69.9, 400.0, 700.0


class SimulatedGpus:
    def __init__(self, count: int, *, clock: Callable[[], float] = time.time) -> None:
        if count < 1:
            raise ValueError("--simulated-gpus needs at least 1 device")
        self.count = count
        self._clock = clock
        self._energy_j = [1.0e9 + 1.0e7 * i for i in range(count)]
        self._last: float | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self._last = self._clock()

    def close(self) -> None:
        pass

    def errors(self) -> dict[tuple[str, str], int]:
        return {}

    def _load(self, i: int, t: float) -> float:
        # Each device has its own slow cycle (10-17 min) between 5% and 95% busy.
        period = 600.0 + 60.0 * (i % 8)
        return 0.5 + 0.45 * math.sin(2 * math.pi * t / period + i)

    def sample(self) -> list[DeviceReading]:
        now = self._clock()
        with self._lock:
            dt = 0.0 if self._last is None else max(0.0, now - self._last)
            self._last = now
            out = []
            for i in range(self.count):
                load = self._load(i, now)
                power = IDLE_W + (PEAK_W - IDLE_W) * load
                self._energy_j[i] += power * dt
                used = int((0.05 + 0.85 * min(1.0, load * 1.5)) * (TOTAL - 479 * MIB))
                out.append(
                    DeviceReading(
                        index=i,
                        uuid=f"GPU-51a17a7e-0000-4000-8000-{i:012d}",
                        name=NAME,
                        simulated=True,
                        utilization=round(load, 4),
                        memory_utilization=round(load * 0.6, 4),
                        memory_used_bytes=used,
                        memory_total_bytes=TOTAL,
                        power_w=round(power, 3),
                        power_limit_w=LIMIT_W,
                        energy_j=round(self._energy_j[i], 3),
                        temperature_c=round(41 + 18 * load),
                        memory_temperature_c=round(48 + 7 * load),
                        sm_clock_mhz=345.0 if load < 0.1 else 1980.0,
                        memory_clock_mhz=2619.0,
                        clock_event_reasons=0x1 if load < 0.1 else 0,
                        ecc_uncorrected=0,
                        remapped_correctable=0,
                        remapped_uncorrectable=0,
                        remapped_pending=False,
                        remap_failure=False,
                        processes=(),
                    )
                )
            return out
