-- Storage v2, legacy profile (ClickHouse 18.16 up to 24.7): the same
-- columns and RowBinary types as the modern profile, plain types, no TTL
-- (the ingester drops expired partitions). Safe to re-run after a failure:
-- ClickHouse 18.16 has no IF [NOT] EXISTS for columns, hence the guards.
-- Stop the ingesters while it runs (docs/operations.md, "Upgrades").
--
-- samples: `label_keys` and `label_values` become ALIAS columns computed
-- from `labels` (`k=v,...`, `\` escapes `,` and `\` in values), so they
-- cost nothing on disk; `ingested` goes (the pipeline panels read
-- ingester_status and ingest_quality).
-- if: SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = 'samples' AND name = 'label_keys' AND default_kind = ''
ALTER TABLE samples DROP COLUMN label_keys;
-- if: SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = 'samples' AND name = 'label_values' AND default_kind = ''
ALTER TABLE samples DROP COLUMN label_values;
-- if: SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = 'samples' AND name = 'ingested'
ALTER TABLE samples DROP COLUMN ingested;
-- if: SELECT count() = 0 FROM system.columns WHERE database = currentDatabase() AND table = 'samples' AND name = 'label_keys'
ALTER TABLE samples ADD COLUMN label_keys Array(String) ALIAS arrayMap(p -> extract(p, '^[^=]*'), extractAll(labels, '(?:[^,\\\\]|\\\\.)+'));
-- if: SELECT count() = 0 FROM system.columns WHERE database = currentDatabase() AND table = 'samples' AND name = 'label_values'
ALTER TABLE samples ADD COLUMN label_values Array(String) ALIAS arrayMap(p -> replaceRegexpAll(substring(p, position(p, '=') + 1), '\\\\(.)', '\\1'), extractAll(labels, '(?:[^,\\\\]|\\\\.)+'));

-- The 1-minute tier gains the host name (last in the sorting key: a column
-- outside it would keep an arbitrary value after merges) and the last value
-- by time; `time` names its bucket as in the other tiers.
-- if: SELECT count() = 0 FROM system.columns WHERE database = currentDatabase() AND table = 'samples_1m' AND name = 'hostname'
ALTER TABLE samples_1m ADD COLUMN hostname String AFTER host_id, MODIFY ORDER BY (metric, host_id, labels, minute, hostname);
-- if: SELECT count() = 0 FROM system.columns WHERE database = currentDatabase() AND table = 'samples_1m' AND name = 'last_value'
ALTER TABLE samples_1m ADD COLUMN last_value AggregateFunction(argMax, Float64, DateTime);
-- if: SELECT count() = 0 FROM system.columns WHERE database = currentDatabase() AND table = 'samples_1m' AND name = 'time'
ALTER TABLE samples_1m ADD COLUMN time DateTime ALIAS minute;
DROP TABLE IF EXISTS samples_1m_mv;
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

-- The 1-hour tier, filled from the raw rows already there, then by its view;
-- `time` names its bucket as in the other tiers.
CREATE TABLE IF NOT EXISTS samples_1h
(
    hour DateTime,
    host_id String,
    hostname String,
    metric String,
    labels String,
    min_value AggregateFunction(min, Float64),
    max_value AggregateFunction(max, Float64),
    sum_value AggregateFunction(sum, Float64),
    count AggregateFunction(count),
    last_value AggregateFunction(argMax, Float64, DateTime),
    time DateTime ALIAS hour
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (metric, host_id, labels, hour, hostname);
-- if: SELECT count() = 0 FROM samples_1h
INSERT INTO samples_1h
SELECT toStartOfHour(time) AS hour, host_id, hostname, metric, labels,
       minState(value), maxState(value), sumState(value), countState(), argMaxState(value, time)
FROM samples
GROUP BY hour, host_id, hostname, metric, labels;
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

-- agent_status keeps every heartbeat (a ReplacingMergeTree merged them
-- away); agent_status_latest keeps the latest per agent instance.
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status' AND engine = 'ReplacingMergeTree'
RENAME TABLE agent_status TO agent_status_v1;
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
ENGINE = MergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (host_id, instance_id, time);
-- if: SELECT (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_v1') * ((SELECT count() FROM agent_status) = 0)
INSERT INTO agent_status SELECT * FROM agent_status_v1;
-- if: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'agent_status_v1'
DROP TABLE agent_status_v1;
CREATE TABLE IF NOT EXISTS agent_status_latest AS agent_status
ENGINE = ReplacingMergeTree(time)
ORDER BY (host_id, instance_id);
-- if: SELECT count() = 0 FROM agent_status_latest
INSERT INTO agent_status_latest SELECT * FROM agent_status;
CREATE MATERIALIZED VIEW IF NOT EXISTS agent_status_latest_mv TO agent_status_latest AS
SELECT * FROM agent_status;
