"""The agent's ``/metrics``: the latest GPU readings as Prometheus metric families.

A custom collector renders whatever the poller read last, so a scrape never waits on NVML.
Names and labels live in ``collector.gpu_names``; units are base units (bytes, watts,
joules, celsius, hertz, ratios 0..1). A field NVML does not support has no series at all
(absent, not zero), the way node_exporter and dcgm-exporter leave unknowns out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector import gpu_names as gn
from collector.gpu import DeviceReading, GpuSource, Poller

log = logging.getLogger(__name__)

# reading attribute -> (metric name, help, scale)
_GAUGES: list[tuple[str, str, str, float]] = [
    ("utilization", gn.UTILIZATION, "GPU busy time over the last sample period (0..1).", 1.0),
    (
        "memory_utilization",
        gn.MEMORY_UTILIZATION,
        "Device memory read/write busy time over the last sample period (0..1).",
        1.0,
    ),
    ("memory_used_bytes", gn.MEMORY_USED, "Device memory in use.", 1.0),
    ("memory_total_bytes", gn.MEMORY_TOTAL, "Device memory in total.", 1.0),
    ("power_w", gn.POWER, "Power draw.", 1.0),
    ("power_limit_w", gn.POWER_LIMIT, "Enforced power limit.", 1.0),
    ("temperature_c", gn.TEMPERATURE, "GPU core temperature.", 1.0),
    ("memory_temperature_c", gn.MEMORY_TEMPERATURE, "HBM memory temperature.", 1.0),
    ("sm_clock_mhz", gn.SM_CLOCK, "Current SM clock.", 1e6),
    ("memory_clock_mhz", gn.MEMORY_CLOCK, "Current memory clock.", 1e6),
    (
        "clock_event_reasons",
        gn.CLOCK_EVENT_REASONS,
        "Bitmask of NVML clock-event (throttle) reasons now active.",
        1.0,
    ),
    ("last_xid", gn.LAST_XID, "Most recent XID critical error seen by the agent.", 1.0),
]


class GpuCollector(Collector):
    def __init__(self, poller: Poller, source: GpuSource, node: str) -> None:
        self.poller = poller
        self.source = source
        self.node = node

    def _labels(self, r: DeviceReading) -> list[str]:
        return [
            str(r.index),
            r.uuid,
            r.name,
            self.node,
            r.mig_profile,
            "true" if r.simulated else "false",
        ]

    def collect(self) -> Iterator[Any]:
        readings, _at, duration = self.poller.latest()
        labels = list(gn.DEVICE_LABELS)
        yield from self._device_families(readings, labels)

        errs = CounterMetricFamily(
            gn.NVML_ERRORS,
            "NVML errors by field and error class (NotSupported counted once).",
            labels=["field", "error"],
        )
        for (fld, err), n in sorted(self.source.errors().items()):
            errs.add_metric([fld, err], n)
        yield errs
        samples = CounterMetricFamily(gn.SAMPLES, "Samples taken of all devices.")
        samples.add_metric([], self.poller.samples)
        yield samples
        if duration is not None:
            d = GaugeMetricFamily(gn.SAMPLE_DURATION, "Time the last sample of all devices took.")
            d.add_metric([], duration)
            yield d

    def _device_families(self, readings: list[DeviceReading], labels: list[str]) -> Iterable[Any]:
        info = GaugeMetricFamily(gn.INFO, "GPU identity; always 1.", labels=labels)
        up = GaugeMetricFamily(gn.UP, "1 if the GPU answers NVML, 0 if it is lost.", labels=labels)
        for r in readings:
            info.add_metric(self._labels(r), 1.0)
            up.add_metric(self._labels(r), 1.0 if r.healthy else 0.0)
        yield info
        yield up
        for attr, name, help_text, scale in _GAUGES:
            fam = GaugeMetricFamily(name, help_text, labels=labels)
            for r in readings:
                v = getattr(r, attr)
                if v is not None:
                    fam.add_metric(self._labels(r), float(v) * scale)
            yield fam
        energy = CounterMetricFamily(
            gn.ENERGY, "Energy consumed since the driver loaded.", labels=labels
        )
        ecc = CounterMetricFamily(
            gn.ECC_UNCORRECTED,
            "Uncorrected ECC errors since the driver loaded (volatile).",
            labels=labels,
        )
        events = GaugeMetricFamily(
            gn.CLOCK_EVENT_ACTIVE,
            "1 while the named clock-event (throttle) reason is active.",
            labels=labels + ["reason"],
        )
        remapped = GaugeMetricFamily(
            gn.REMAPPED_ROWS, "Rows remapped, by cause.", labels=labels + ["cause"]
        )
        pending = GaugeMetricFamily(
            gn.REMAPPED_ROWS_PENDING, "1 if a row remapping waits for a GPU reset.", labels=labels
        )
        failure = GaugeMetricFamily(
            gn.ROW_REMAP_FAILURE, "1 if a row remapping has failed.", labels=labels
        )
        xids = CounterMetricFamily(
            gn.XID_ERRORS, "XID critical errors seen, by XID.", labels=labels + ["xid"]
        )
        procs = GaugeMetricFamily(gn.PROCESSES, "Compute processes on the device.", labels=labels)
        proc_mem = GaugeMetricFamily(
            gn.PROCESS_MEMORY, "Device memory used by a process.", labels=labels + ["pid"]
        )
        for r in readings:
            lv = self._labels(r)
            if r.energy_j is not None:
                energy.add_metric(lv, r.energy_j)
            if r.ecc_uncorrected is not None:
                ecc.add_metric(lv, float(r.ecc_uncorrected))
            if r.clock_event_reasons is not None:
                for reason, bit in gn.CLOCK_EVENT_BITS.items():
                    events.add_metric(lv + [reason], 1.0 if r.clock_event_reasons & bit else 0.0)
            if r.remapped_correctable is not None:
                remapped.add_metric(lv + ["correctable"], float(r.remapped_correctable))
            if r.remapped_uncorrectable is not None:
                remapped.add_metric(lv + ["uncorrectable"], float(r.remapped_uncorrectable))
            if r.remapped_pending is not None:
                pending.add_metric(lv, 1.0 if r.remapped_pending else 0.0)
            if r.remap_failure is not None:
                failure.add_metric(lv, 1.0 if r.remap_failure else 0.0)
            for xid, n in r.xid_counts:
                xids.add_metric(lv + [str(xid)], float(n))
            if r.processes is not None:
                procs.add_metric(lv, float(len(r.processes)))
                for p in r.processes:
                    if p.used_memory_bytes is not None:
                        proc_mem.add_metric(lv + [str(p.pid)], float(p.used_memory_bytes))
        yield from (energy, ecc, events, remapped, pending, failure, xids, procs, proc_mem)


class AgentServer:
    """``/metrics`` over HTTP for a source: poller thread + prometheus-client's server."""

    def __init__(
        self,
        source: GpuSource,
        *,
        node: str,
        interval_s: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 9835,
    ) -> None:
        self.source = source
        self.node = node
        self.host = host
        self.requested_port = port
        self.poller = Poller(source, interval_s)
        self.registry = CollectorRegistry()
        self.registry.register(GpuCollector(self.poller, source, node))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        """Open the source (raises ``NvmlUnavailable`` without a driver), poll, serve."""
        self.source.open()
        try:
            self.poller.start()
            self._server, self._thread = start_http_server(
                self.requested_port, addr=self.host, registry=self.registry
            )
        except BaseException:
            self.poller.stop()
            self.source.close()
            raise

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.poller.stop()
        self.source.close()
