-- Replicas, legacy profile (ClickHouse 18.16 up to 24.7).
--
-- 0007 and 0008 made the tables deduplication needs replicated (`samples`,
-- its tiers, `agent_status`). This makes every other table an INSERT
-- reaches replicated too (`agent_status_latest`, `ingest_quality`,
-- `ingester_status`, `ingest_journal`), so that each replica of a shard
-- holds the same rows and the ingester can send any INSERT to any replica
-- (docs/operations.md, "Shards and replicas"). Applies where the server has
-- ZooKeeper and the macros `shard` and `replica`; elsewhere nothing changes.
-- `migrate` runs it on every replica of every shard (no ON CLUSTER): a
-- replica whose table already holds the shard's rows fetches them instead
-- of copying its own. `${database}` is replaced by `migrate` with the
-- database's name. Stop the ingesters while it runs: a view is re-created.
--
-- Safe to re-run: every step is guarded or idempotent.

-- 1. A replicated copy of each table that is still local.
-- if: SELECT (SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper') * ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest' AND engine = 'ReplacingMergeTree')
CREATE TABLE IF NOT EXISTS agent_status_latest_replicated AS agent_status_latest
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/${database}/agent_status_latest', '{replica}', time)
ORDER BY (host_id, instance_id)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'agent_status_latest_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'agent_status_latest' AND active) > 0)
INSERT INTO agent_status_latest_replicated SELECT * FROM agent_status_latest;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper') * ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS ingest_quality_replicated AS ingest_quality
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/ingest_quality', '{replica}')
PARTITION BY toYYYYMM(period_end)
ORDER BY (host_id, instance_id, period_end)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_quality_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_quality' AND active) > 0)
INSERT INTO ingest_quality_replicated SELECT * FROM ingest_quality;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper') * ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS ingester_status_replicated AS ingester_status
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/ingester_status', '{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (ingester, time)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingester_status_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingester_status' AND active) > 0)
INSERT INTO ingester_status_replicated SELECT * FROM ingester_status;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper') * ((SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')) = 2) * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal' AND engine = 'MergeTree')
CREATE TABLE IF NOT EXISTS ingest_journal_replicated AS ingest_journal
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/${database}/ingest_journal', '{replica}')
PARTITION BY toYYYYMMDD(time)
ORDER BY (consumer_group, topic, partition, last_offset)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated') * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_journal_replicated' AND active) = 0) * ((SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'ingest_journal' AND active) > 0)
INSERT INTO ingest_journal_replicated SELECT * FROM ingest_journal;

-- 2. The views, dropped while their tables change places.
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_latest_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_quality_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingester_status_replicated') + (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ingest_journal_replicated')
DROP TABLE IF EXISTS agent_status_latest_mv;

-- 3. Each replicated copy takes its table's name.
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

-- 4. The view again, over the new table.
CREATE MATERIALIZED VIEW IF NOT EXISTS agent_status_latest_mv TO agent_status_latest AS
SELECT * FROM agent_status;

-- 5. The local tables, once their rows are in the replicated ones.
DROP TABLE IF EXISTS agent_status_latest_local;
DROP TABLE IF EXISTS ingest_quality_local;
DROP TABLE IF EXISTS ingester_status_local;
DROP TABLE IF EXISTS ingest_journal_local;
