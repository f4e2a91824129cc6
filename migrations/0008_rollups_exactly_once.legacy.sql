-- Rollups exactly once, legacy profile (ClickHouse 18.16 up to 24.7).
--
-- These servers feed a table's materialized views after writing its part,
-- and skip the views for a block they deduplicate. A server killed between
-- the two leaves the 1-minute and 1-hour tiers without that block, and the
-- ingester's retry, deduplicated in `samples`, never feeds them. So the
-- ingester writes samples into `samples_in` (engine Null), whose views feed
-- `samples` and both tiers, each of them replicated and deduplicating on
-- its own: a retried block lands in every table that lacks it, and only
-- there. Applies where 0007 made `samples` replicated (ZooKeeper and the
-- `shard`/`replica` macros); elsewhere nothing changes.
-- `${database}` is replaced by `migrate` with the database's name.
-- Stop the ingesters while it runs: the views are re-created.
--
-- Safe to re-run: every step is guarded or idempotent.

-- The tiers: copied into replicated tables, which then take their names.
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples' AND engine = 'ReplicatedMergeTree') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m' AND engine = 'AggregatingMergeTree')
CREATE TABLE IF NOT EXISTS samples_1m_replicated AS samples_1m
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/${database}/samples_1m', '{replica}')
PARTITION BY toDate(minute)
PRIMARY KEY (metric, host_id, labels, minute)
ORDER BY (metric, host_id, labels, minute, hostname)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples' AND engine = 'ReplicatedMergeTree') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h' AND engine = 'AggregatingMergeTree')
CREATE TABLE IF NOT EXISTS samples_1h_replicated AS samples_1h
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/${database}/samples_1h', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (metric, host_id, labels, hour, hostname)
SETTINGS index_granularity = 8192, replicated_deduplication_window = 10000;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated'
DROP TABLE IF EXISTS samples_1m_mv;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated'
DROP TABLE IF EXISTS samples_1h_mv;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated') * ((SELECT count() FROM samples_1m_replicated) = 0)
INSERT INTO samples_1m_replicated SELECT * FROM samples_1m;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated') * ((SELECT count() FROM samples_1h_replicated) = 0)
INSERT INTO samples_1h_replicated SELECT * FROM samples_1h;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m')
RENAME TABLE samples_1m TO samples_1m_v1;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m_replicated'
RENAME TABLE samples_1m_replicated TO samples_1m;
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated') * (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h')
RENAME TABLE samples_1h TO samples_1h_v1;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1h_replicated'
RENAME TABLE samples_1h_replicated TO samples_1h;
DROP TABLE IF EXISTS samples_1m_v1;
DROP TABLE IF EXISTS samples_1h_v1;

-- The entry point and its views (only over replicated tables).
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_1m' AND engine = 'ReplicatedAggregatingMergeTree'
CREATE TABLE IF NOT EXISTS samples_in AS samples ENGINE = Null;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_in'
CREATE MATERIALIZED VIEW IF NOT EXISTS samples_in_mv TO samples AS
SELECT * FROM samples_in;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_in'
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
FROM samples_in
GROUP BY minute, host_id, hostname, metric, labels;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_in'
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
FROM samples_in
GROUP BY hour, host_id, hostname, metric, labels;
