-- One row per sample (long format). Partitioned by day, ordered for scans of
-- one metric of one host over time. Runs on ClickHouse 18.16 and current.
CREATE TABLE IF NOT EXISTS samples
(
    time DateTime,
    time_ms UInt64,
    host_id String,
    hostname String,
    metric String,
    labels String,
    label_keys Array(String),
    label_values Array(String),
    value Float64,
    kind Enum8('gauge' = 1, 'counter' = 2),
    unit String,
    instance_id String,
    seq UInt64,
    ingested DateTime DEFAULT now()
)
ENGINE = MergeTree()
PARTITION BY toDate(time)
ORDER BY (metric, host_id, labels, time);
