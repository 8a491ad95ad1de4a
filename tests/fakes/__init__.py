"""Faithful stand-ins for what cannot run here (NVML) and small real servers for tests."""
