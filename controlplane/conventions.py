"""Names shared across the control plane: tables, env vars, roles, metric names.

Keeping them in one module means a rename is one edit, and tests can import the same
names the code uses.
"""

from __future__ import annotations

# Tables (in the store's database).
REQUESTS = "requests"
REQUESTS_1M = "requests_1m"
REQUESTS_1H = "requests_1h"
REQUESTS_1M_POOL = "requests_1m_pool"  # the same rollups without the tenant dimension
REQUESTS_1H_POOL = "requests_1h_pool"
GPU_SAMPLES = "gpu_samples"
REPLICA_SAMPLES = "replica_samples"
ACTIONS = "actions"
ALERT_EVENTS = "alert_events"
SLO_EVALUATIONS = "slo_evaluations"
SLO_HOUR_STATE = "slo_hour_state"  # held hours saved across restarts (m0007)
SCHEMA_MIGRATIONS = "schema_migrations"

# Environment variables.
ENV_CLICKHOUSE_URL = "GOVERNOR_CLICKHOUSE_URL"
ENV_CLICKHOUSE_USER = "GOVERNOR_CLICKHOUSE_USER"
ENV_CLICKHOUSE_PASSWORD = "GOVERNOR_CLICKHOUSE_PASSWORD"
ENV_API_TOKENS = "GOVERNOR_API_TOKENS"
ENV_DATA_DIR = "GOVERNOR_DATA_DIR"

DEFAULT_DATA_DIR = "./governor-data"
DEFAULT_DATABASE = "governor"

# API roles, weakest first: a role may do everything the roles before it may.
ROLES = ("viewer", "operator", "admin")

# Governor's own Prometheus metrics.
METRIC_PREFIX = "governor_"

# Labels.
LABEL_POOL = "pool"
LABEL_REPLICA = "replica"
LABEL_MODEL = "model"
LABEL_TENANT = "tenant"
