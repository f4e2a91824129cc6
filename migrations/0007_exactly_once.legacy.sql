-- Exactly-once inserts, legacy profile (ClickHouse 18.16 up to 24.7).
--
-- These servers deduplicate inserts only into Replicated tables: an INSERT
-- whose data is identical to one of the last `replicated_deduplication_window`
-- inserts of that table is dropped, and so are the rows its views would
-- have written. The ingester rebuilds a range of offsets byte for byte after
-- a crash, so with `samples` and `agent_status` replicated nothing is stored
-- twice. Replication needs ZooKeeper (or ClickHouse Keeper) and the macros
-- `shard` and `replica` in the server's config (docs/operations.md,
-- "Exactly-once"); on a server without them the tables stay as they are
-- and a crash can store rows twice (the ingester says so at start-up).
-- `${database}` is replaced by `migrate` with the database's name.
-- Stop the ingesters while it runs: the views are re-created.
--
-- Safe to re-run: every step is guarded or idempotent.

CREATE TABLE IF NOT EXISTS ingest_journal
(
    time DateTime,
    consumer_group String,
    topic String,
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    records UInt32,
    ingester String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(time)
ORDER BY (consumer_group, topic, partition, last_offset);

-- samples: copied into a replicated table, which then takes its name.
-- if: SELECT (SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper') * ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS samples_replicated AS samples
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/samples', '{replica}')
PARTITION BY toDate(time)
ORDER BY (metric, host_id, labels, time)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated') * ((SELECT count() FROM samples_replicated) = 0)
INSERT INTO samples_replicated SELECT * FROM samples;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated'
DROP TABLE IF EXISTS samples_1m_mv;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated'
DROP TABLE IF EXISTS samples_1h_mv;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples')
RENAME TABLE samples TO samples_v1;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated'
RENAME TABLE samples_replicated TO samples;
CREATE MATERIALIZED VIEW IF NOT EXISTS samples_1m_mv TO samples_1m AS
SELECT
    toStartOfMinute(time) AS minute,
    host_id,
    hostname,
    metric,
    labels,
    minState(value) AS min_value,
    maxState(value) AS max_value,
    sumState(value) AS sum_value,
    countState() AS count,
    argMaxState(value, time) AS last_value
FROM samples
GROUP BY minute, host_id, hostname, metric, labels;
CREATE MATERIALIZED VIEW IF NOT EXISTS samples_1h_mv TO samples_1h AS
SELECT
    toStartOfHour(time) AS hour,
    host_id,
    hostname,
    metric,
    labels,
    minState(value) AS min_value,
    maxState(value) AS max_value,
    sumState(value) AS sum_value,
    countState() AS count,
    argMaxState(value, time) AS last_value
FROM samples
GROUP BY hour, host_id, hostname, metric, labels;
DROP TABLE IF EXISTS samples_v1;

-- agent_status: the same, without `ingested` (a server-side now() would make
-- an INSERT built again differ from the first).
-- if: SELECT (SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper') * ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS agent_status_replicated
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
    last_error String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/agent_status', '{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (host_id, instance_id, time)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated') * ((SELECT count() FROM agent_status_replicated) = 0)
INSERT INTO agent_status_replicated
SELECT time, time_ms, host_id, hostname, instance_id, agent_version, uptime_ms, last_seq,
       spool_bytes, spool_records, dropped_first, dropped_last, last_error
FROM agent_status;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated'
DROP TABLE IF EXISTS agent_status_latest_mv;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status')
RENAME TABLE agent_status TO agent_status_v1;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated'
RENAME TABLE agent_status_replicated TO agent_status;
-- if: SELECT (SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = 'agent_status_latest' AND name = 'ingested') * (SELECT count() = 0 FROM system.columns WHERE database = currentDatabase() AND table = 'agent_status' AND name = 'ingested')
ALTER TABLE agent_status_latest DROP COLUMN ingested;
CREATE MATERIALIZED VIEW IF NOT EXISTS agent_status_latest_mv TO agent_status_latest AS
SELECT * FROM agent_status;
DROP TABLE IF EXISTS agent_status_v1;
