-- 1-minute rollup per host, metric and label set, fed by a materialized view
-- so dashboards read a small table. Read with minMerge/maxMerge/sumMerge/countMerge.
CREATE TABLE IF NOT EXISTS samples_1m
(
    minute DateTime,
    host_id String,
    metric String,
    labels String,
    min_value AggregateFunction(min, Float64),
    max_value AggregateFunction(max, Float64),
    sum_value AggregateFunction(sum, Float64),
    count AggregateFunction(count)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toDate(minute)
ORDER BY (metric, host_id, labels, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS samples_1m_mv TO samples_1m AS
SELECT
    toStartOfMinute(time) AS minute,
    host_id,
    metric,
    labels,
    minState(value) AS min_value,
    maxState(value) AS max_value,
    sumState(value) AS sum_value,
    countState() AS count
FROM samples
GROUP BY minute, host_id, metric, labels;
