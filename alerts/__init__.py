"""Alerting: alert lifecycle, grouping, routing, silences and notifiers."""
