-- One row per ingester per accounting period (`quality.interval`): what the
-- pipeline itself did, for dashboards that have only ClickHouse to read.
CREATE TABLE IF NOT EXISTS ingester_status
(
    time DateTime,
    ingester String,
    records UInt64,
    rows_inserted UInt64,
    dead_letters UInt64,
    insert_retries UInt64,
    consumer_lag Int64,
    assigned_partitions Int64,
    in_flight_bytes Int64,
    paused UInt8
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (ingester, time);
