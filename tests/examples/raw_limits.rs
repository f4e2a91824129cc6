//! The physical limits the ingest-drain benchmark compares the ingester
//! with, measured on the same topic:
//!
//! - `raw_limits consume BROKERS TOPIC RECORDS`: an rdkafka consumer that
//!   reads every record and decodes nothing.
//! - `raw_limits insert BROKERS TOPIC RECORDS CLICKHOUSE_URL DATABASE
//!   [entry|sorted]`: reads and decodes the same records into `samples` rows
//!   (untimed), then times one large RowBinary INSERT of all of them over
//!   HTTP (LZ4). Into `samples` by default (the benchmark drops its rollup
//!   views first: ClickHouse's bare insert). `entry`: into the table the
//!   ingester writes to (`samples_in` where migration 0008 made one, else
//!   `samples`) with the views in place and the ingester's deduplication
//!   settings (a token on servers that take one): the same server work as
//!   the ingester's INSERTs. `sorted`: the same, rows sorted by the table's
//!   sort key first.
//!
//! Each prints one `key=value` line for `bench/ingest-drain.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use spillway_ingester::precision::{Precision, default_rules};
use spillway_ingester::sink::rows::{SampleRow, sample_rows};
use spillway_shared::{Limits, Record, decode};

fn consumer(brokers: &str, topic: &str) -> Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "raw-limits")
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "65536")
        .create()?;
    let metadata = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .context("no such topic")?
        .partitions()
        .len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Reads `records` records, handing each payload to `each`.
fn read(brokers: &str, topic: &str, records: u64, mut each: impl FnMut(&[u8])) -> Result<u64> {
    let c = consumer(brokers, topic)?;
    let (mut n, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < records {
        if Instant::now() > deadline {
            bail!("only {n} of {records} records after 600 s");
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let payload = m.payload().unwrap_or_default();
                bytes += payload.len() as u64;
                each(payload);
                n += 1;
            }
            Some(Err(e)) => bail!("consumer error: {e}"),
            None => {}
        }
    }
    Ok(bytes)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["consume", brokers, topic, records] => {
            let records: u64 = records.parse()?;
            let started = Instant::now();
            let bytes = read(brokers, topic, records, |_| {})?;
            let secs = started.elapsed().as_secs_f64();
            println!("consume records={records} bytes={bytes} seconds={secs:.3}");
        }
        ["insert", brokers, topic, records, url, database, how @ ..] => {
            let (entry, sorted) = match how {
                [] => (false, false),
                ["entry"] => (true, false),
                ["sorted"] => (true, true),
                _ => bail!("the insert's last argument is `entry` or `sorted`"),
            };
            let records: u64 = records.parse()?;
            let mut rows: Vec<SampleRow> = Vec::new();
            let limits = Limits::default();
            let precision = Precision::new(&default_rules());
            read(brokers, topic, records, |payload| {
                if let Ok(Record::Metrics(m)) = decode(payload, &limits) {
                    sample_rows(m, &precision, &mut rows);
                }
            })?;
            if sorted {
                // The table's ORDER BY (metric, host_id, labels, time).
                rows.sort_unstable_by(|a, b| {
                    (&a.metric, &a.host_id, &a.labels, a.time)
                        .cmp(&(&b.metric, &b.host_id, &b.labels, b.time))
                });
            }
            let client = clickhouse::Client::default()
                .with_url(*url)
                .with_database(*database)
                .with_validation(false);
            let mut table = "samples";
            let mut client = client;
            if entry {
                let has_entry: u64 = client
                    .query("SELECT count() FROM system.tables WHERE database = ? AND name = 'samples_in'")
                    .bind(*database)
                    .fetch_one()
                    .await?;
                if has_entry > 0 {
                    table = "samples_in";
                }
                let version: String = client.query("SELECT version()").fetch_one().await?;
                let v = spillway_ingester::sink::parse_version(&version).unwrap_or((0, 0));
                if v >= (22, 2) {
                    client = client
                        .with_setting("insert_deduplication_token", "raw-limits:0-0")
                        .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
                }
            }
            let started = Instant::now();
            let mut insert = client.insert::<SampleRow>(table).await?;
            for row in &rows {
                insert.write(row).await?;
            }
            insert.end().await?;
            let secs = started.elapsed().as_secs_f64();
            let name = match how {
                [] => "insert",
                ["entry"] => "entry",
                _ => "sorted",
            };
            println!("{name} rows={} seconds={secs:.3} table={table}", rows.len());
        }
        _ => bail!(
            "usage: raw_limits consume BROKERS TOPIC RECORDS | \
             raw_limits insert BROKERS TOPIC RECORDS CLICKHOUSE_URL DATABASE [entry|sorted]"
        ),
    }
    Ok(())
}
