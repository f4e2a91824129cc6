-- Agent heartbeats. ReplacingMergeTree keeps the latest per agent instance
-- after merges; query with FINAL or argMax(..., time) for exact latest values.
CREATE TABLE IF NOT EXISTS agent_status
(
    time DateTime,
    time_ms UInt64,
    host_id String,
    hostname String,
    instance_id String,
    agent_version String,
    uptime_ms UInt64,
    last_seq Int64,
    spool_bytes UInt64,
    spool_records UInt64,
    dropped_first Array(UInt64),
    dropped_last Array(UInt64),
    last_error String,
    ingested DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree(time)
PARTITION BY toYYYYMM(time)
ORDER BY (host_id, instance_id);
