"""Alerting state: alert instances, notification log, silences, delivery queue.

These tables are small and written on change only. Each row is a version of one entity
(``version`` grows monotonically); readers take the newest version per key with
``ORDER BY key, version DESC LIMIT 1 BY key``. ReplacingMergeTree compacts old versions
in the background, so the tables stay the size of the live state.
"""

STATEMENTS: list[str] = [
    """
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint String,
    version UInt64,
    updated_at DateTime64(3, 'UTC'),
    state LowCardinality(String),
    labels String,
    annotations String,
    generator_url String,
    value Nullable(Float64),
    active_at Nullable(DateTime64(3, 'UTC')),
    fired_at Nullable(DateTime64(3, 'UTC')),
    resolved_at Nullable(DateTime64(3, 'UTC')),
    last_active_at Nullable(DateTime64(3, 'UTC')),
    last_eval_at DateTime64(3, 'UTC'),
    for_s Float64,
    keep_firing_for_s Float64
) ENGINE = ReplacingMergeTree(version)
ORDER BY fingerprint
""",
    """
CREATE TABLE IF NOT EXISTS alert_nflog (
    receiver LowCardinality(String),
    group_key String,
    version UInt64,
    sent_at DateTime64(3, 'UTC'),
    firing String,
    resolved String,
    payload_hash String,
    delivery_id String
) ENGINE = ReplacingMergeTree(version)
ORDER BY (receiver, group_key)
""",
    """
CREATE TABLE IF NOT EXISTS alert_silences (
    id String,
    version UInt64,
    matchers String,
    starts_at DateTime64(3, 'UTC'),
    ends_at DateTime64(3, 'UTC'),
    created_by String,
    comment String,
    updated_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(version)
ORDER BY id
""",
    """
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id String,
    version UInt64,
    receiver LowCardinality(String),
    kind LowCardinality(String),
    group_key String,
    url String,
    body String,
    fingerprints String,
    status LowCardinality(String),
    attempts UInt32,
    created_at DateTime64(3, 'UTC'),
    next_attempt_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    last_error String,
    last_status UInt16
) ENGINE = ReplacingMergeTree(version)
ORDER BY id
""",
]
