-- Exactly-once inserts, modern profile (ClickHouse 24.8 and later).
--
-- The ingester sends every INSERT built from Kafka records with an
-- `insert_deduplication_token` naming its range of offsets, and
-- `deduplicate_blocks_in_dependent_materialized_views = 1`, so a range
-- inserted again after a crash is dropped by the server, in `samples` and in
-- every table its views feed. Each of those tables needs a deduplication
-- window: the last 10,000 inserts per table are remembered, far more than a
-- recovery replays (ARCHITECTURE.md, "Delivery guarantees").
ALTER TABLE samples MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE samples_1m MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE samples_1h MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE agent_status MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE agent_status_latest MODIFY SETTING non_replicated_deduplication_window = 10000;

-- The insert journal: each range of offsets a member cuts is recorded here
-- (on the first shard) before any of its rows is inserted, so the next owner
-- of the partition rebuilds exactly the same INSERTs. `migrate` sets its TTL
-- from `retention.journal_days`.
CREATE TABLE IF NOT EXISTS ingest_journal
(
    time DateTime CODEC(Delta, ZSTD(1)),
    consumer_group LowCardinality(String),
    topic LowCardinality(String),
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    records UInt32,
    ingester LowCardinality(String)
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(time)
ORDER BY (consumer_group, topic, partition, last_offset)
SETTINGS ttl_only_drop_parts = 1;
