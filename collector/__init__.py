"""Governor collectors: turn spans, Prometheus text and NVML readings into typed rows."""
