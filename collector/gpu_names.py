"""Names and labels of the agent's Prometheus metrics (``governor agent``).

Shared by the renderer (``collector.gpu_metrics``) and the scrape adapter that reads them
back (``collector.scrape_adapters``), so a rename is one edit. Base units throughout:
bytes, watts, joules, celsius, hertz; ratios are 0..1.
"""

from __future__ import annotations

# Labels on every per-device series. ``mig_profile`` is "" for a whole GPU;
# ``simulated`` is "true" only for ``--simulated-gpus`` devices.
DEVICE_LABELS = ("gpu", "uuid", "name", "node", "mig_profile", "simulated")

UP = "governor_gpu_up"
INFO = "governor_gpu_info"
UTILIZATION = "governor_gpu_utilization_ratio"
MEMORY_UTILIZATION = "governor_gpu_memory_utilization_ratio"
MEMORY_USED = "governor_gpu_memory_used_bytes"
MEMORY_TOTAL = "governor_gpu_memory_total_bytes"
POWER = "governor_gpu_power_watts"
POWER_LIMIT = "governor_gpu_power_limit_watts"
ENERGY = "governor_gpu_energy_joules"  # counter: exposed as ..._total
TEMPERATURE = "governor_gpu_temperature_celsius"
MEMORY_TEMPERATURE = "governor_gpu_memory_temperature_celsius"
SM_CLOCK = "governor_gpu_sm_clock_hertz"
MEMORY_CLOCK = "governor_gpu_memory_clock_hertz"
CLOCK_EVENT_REASONS = "governor_gpu_clock_event_reasons"
CLOCK_EVENT_ACTIVE = "governor_gpu_clock_event_active"  # + label reason
ECC_UNCORRECTED = "governor_gpu_ecc_uncorrected_errors"  # counter
REMAPPED_ROWS = "governor_gpu_remapped_rows"  # + label cause
REMAPPED_ROWS_PENDING = "governor_gpu_remapped_rows_pending"
ROW_REMAP_FAILURE = "governor_gpu_row_remap_failure"
XID_ERRORS = "governor_gpu_xid_errors"  # counter, + label xid
LAST_XID = "governor_gpu_last_xid"
PROCESSES = "governor_gpu_processes"
PROCESS_MEMORY = "governor_gpu_process_memory_bytes"  # + label pid

NVML_ERRORS = "governor_agent_nvml_errors"  # counter, labels field, error
SAMPLE_DURATION = "governor_agent_sample_duration_seconds"
SAMPLES = "governor_agent_samples"  # counter

# NVML clock-event (throttle) reason bits, nvml.h nvmlClocksEventReason*.
CLOCK_EVENT_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
