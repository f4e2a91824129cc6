-- Data accounting: one row per agent instance per ingester per period
-- (`quality.interval`, default 60 s). Still missing = sum(gaps) - sum(late).
CREATE TABLE IF NOT EXISTS ingest_quality
(
    period_start DateTime,
    period_end DateTime,
    ingester String,
    host_id String,
    instance_id String,
    records UInt64,
    first_seq UInt64,
    last_seq UInt64,
    gaps UInt64,
    late UInt64,
    duplicates UInt64,
    agent_dropped UInt64,
    freshness_p50_ms UInt32,
    freshness_p99_ms UInt32,
    freshness_max_ms UInt32
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(period_end)
ORDER BY (host_id, instance_id, period_end);
