-- Replicas, modern profile (ClickHouse 24.8 and later).
--
-- On a server with the macros `shard` and `replica` (a cluster with
-- ClickHouse Keeper or ZooKeeper), every table an INSERT reaches becomes
-- replicated: `samples`, both tiers, `agent_status`, `agent_status_latest`,
-- `ingest_quality`, `ingester_status` and `ingest_journal`. Each replica of a
-- shard then holds the same rows, and the insert deduplication that makes
-- the ingester exactly-once (`insert_deduplication_token`, views included)
-- is kept in Keeper for the whole shard: a retry that reaches another
-- replica after a crash is dropped there too (docs/operations.md, "Shards
-- and replicas"). Elsewhere nothing changes (the tables keep
-- `non_replicated_deduplication_window`, migration 0007).
-- `migrate` runs it on every replica of every shard (no ON CLUSTER): a
-- replica whose table already holds the shard's rows fetches them instead
-- of copying its own. `${database}` is replaced by `migrate` with the
-- database's name, `${ttl:TABLE}` with the table's TTL from `[retention]`.
-- Stop the ingesters while it runs: the views are re-created.
--
-- Safe to re-run: every step is guarded or idempotent.

-- 1. A replicated copy of each table that is still local.
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS samples_replicated AS samples
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/samples', '{replica}')
PARTITION BY toDate(time)
ORDER BY (metric, host_id, labels, time)
${ttl:samples}
SETTINGS ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'samples_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'samples' AND active) > 0)
INSERT INTO samples_replicated SELECT * FROM samples;
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m' AND engine = 'AggregatingMergeTree')
CREATE TABLE IF NOT EXISTS samples_1m_replicated AS samples_1m
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/${database}/samples_1m', '{replica}')
PARTITION BY toDate(minute)
ORDER BY (metric, host_id, labels, minute, hostname)
${ttl:samples_1m}
SETTINGS ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'samples_1m_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'samples_1m' AND active) > 0)
INSERT INTO samples_1m_replicated SELECT * FROM samples_1m;
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h' AND engine = 'AggregatingMergeTree')
CREATE TABLE IF NOT EXISTS samples_1h_replicated AS samples_1h
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/${database}/samples_1h', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (metric, host_id, labels, hour, hostname)
${ttl:samples_1h}
SETTINGS ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'samples_1h_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'samples_1h' AND active) > 0)
INSERT INTO samples_1h_replicated SELECT * FROM samples_1h;
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS agent_status_replicated AS agent_status
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/agent_status', '{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (host_id, instance_id, time)
${ttl:agent_status}
SETTINGS ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'agent_status_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'agent_status' AND active) > 0)
INSERT INTO agent_status_replicated SELECT * FROM agent_status;
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest' AND engine = 'ReplacingMergeTree')
CREATE TABLE IF NOT EXISTS agent_status_latest_replicated AS agent_status_latest
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/${database}/agent_status_latest', '{replica}', time)
ORDER BY (host_id, instance_id)
SETTINGS replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'agent_status_latest_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'agent_status_latest' AND active) > 0)
INSERT INTO agent_status_latest_replicated SELECT * FROM agent_status_latest;
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS ingest_quality_replicated AS ingest_quality
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/ingest_quality', '{replica}')
PARTITION BY toYYYYMM(period_end)
ORDER BY (host_id, instance_id, period_end)
${ttl:ingest_quality}
SETTINGS ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_quality_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_quality' AND active) > 0)
INSERT INTO ingest_quality_replicated SELECT * FROM ingest_quality;
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS ingester_status_replicated AS ingester_status
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/ingester_status', '{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (ingester, time)
SETTINGS replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingester_status_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingester_status' AND active) > 0)
INSERT INTO ingester_status_replicated SELECT * FROM ingester_status;
-- if: SELECT ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS ingest_journal_replicated AS ingest_journal
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/ingest_journal', '{replica}')
PARTITION BY toYYYYMMDD(time)
ORDER BY (consumer_group, topic, partition, last_offset)
${ttl:ingest_journal}
SETTINGS ttl_only_drop_parts = 1, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_journal_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_journal' AND active) > 0)
INSERT INTO ingest_journal_replicated SELECT * FROM ingest_journal;

-- 2. The views, dropped while their tables change places.
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated')
DROP TABLE IF EXISTS samples_1m_mv;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated')
DROP TABLE IF EXISTS samples_1h_mv;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated')
DROP TABLE IF EXISTS agent_status_latest_mv;

-- 3. Each replicated copy takes its table's name.
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples')
RENAME TABLE samples TO samples_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_replicated')
RENAME TABLE samples_replicated TO samples;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m')
RENAME TABLE samples_1m TO samples_1m_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated')
RENAME TABLE samples_1m_replicated TO samples_1m;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h')
RENAME TABLE samples_1h TO samples_1h_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated')
RENAME TABLE samples_1h_replicated TO samples_1h;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status')
RENAME TABLE agent_status TO agent_status_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_replicated')
RENAME TABLE agent_status_replicated TO agent_status;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest')
RENAME TABLE agent_status_latest TO agent_status_latest_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated')
RENAME TABLE agent_status_latest_replicated TO agent_status_latest;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality')
RENAME TABLE ingest_quality TO ingest_quality_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated')
RENAME TABLE ingest_quality_replicated TO ingest_quality;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status')
RENAME TABLE ingester_status TO ingester_status_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated')
RENAME TABLE ingester_status_replicated TO ingester_status;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal')
RENAME TABLE ingest_journal TO ingest_journal_local;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated')
RENAME TABLE ingest_journal_replicated TO ingest_journal;

-- 4. The views again, over the new tables.
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
CREATE MATERIALIZED VIEW IF NOT EXISTS agent_status_latest_mv TO agent_status_latest AS
SELECT * FROM agent_status;

-- 5. The local tables, once their rows are in the replicated ones.
DROP TABLE IF EXISTS samples_local;
DROP TABLE IF EXISTS samples_1m_local;
DROP TABLE IF EXISTS samples_1h_local;
DROP TABLE IF EXISTS agent_status_local;
DROP TABLE IF EXISTS agent_status_latest_local;
DROP TABLE IF EXISTS ingest_quality_local;
DROP TABLE IF EXISTS ingester_status_local;
DROP TABLE IF EXISTS ingest_journal_local;
