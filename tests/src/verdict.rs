//! What became of a topic's metrics records, for one consumer group: stored
//! in ClickHouse, **lost** (the group committed past them and their rows are
//! not stored: the ingester broke its promise), or **not yet ingested** (at
//! or above the committed offset: a stall, which a working group recovers
//! from). A chaos run that ends with rows missing needs this to tell one
//! from the other, and [`group_assigns`] to say whose fault a stall is.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use spillway_shared::{Limits, Record, decode};

use crate::TestEnv;

/// One partition's offsets.
#[derive(Debug, Clone, Copy)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The group's committed offset (0 when it has none).
    pub committed: i64,
    /// The end of the partition.
    pub high: i64,
}

/// Where each metrics record of the topic is.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Metrics records read from the topic.
    pub records: u64,
    /// Their rows are in ClickHouse.
    pub stored: u64,
    /// Below the committed offset, rows not stored.
    pub lost: u64,
    /// At or above the committed offset, rows not stored.
    pub pending: u64,
    /// Offsets below the high watermarks the reader never got.
    pub unread: u64,
    pub partitions: Vec<PartitionOffsets>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records: {} stored, {} lost (committed, rows missing), {} not yet ingested \
             (above the committed offset), {} unread; offsets (partition committed/end):",
            self.records, self.stored, self.lost, self.pending, self.unread
        )?;
        for p in &self.partitions {
            write!(f, " {} {}/{}", p.partition, p.committed, p.high)?;
        }
        Ok(())
    }
}

/// Reads every record of `topic` (all `partitions`) and the offsets `group`
/// committed, and looks up each metrics record's (instance, seq) in `db`'s
/// `samples` on `env`'s shards.
pub async fn verdict(
    env: &TestEnv,
    topic: &str,
    partitions: i32,
    group: &str,
    db: &str,
) -> Result<Verdict> {
    let (offsets, records) = read_topic(env, topic, partitions, group)?;
    let mut stored_keys: HashSet<(String, u64)> = HashSet::new();
    for shard in 0..env.clickhouse_urls.len() {
        let rows: Vec<(String, u64)> = env
            .clickhouse(shard)
            .with_database(db)
            .query("SELECT DISTINCT instance_id, seq FROM samples")
            .fetch_all()
            .await
            .with_context(|| format!("reading samples on shard {shard}"))?;
        stored_keys.extend(rows);
    }
    let committed: HashMap<i32, i64> = offsets.iter().map(|p| (p.partition, p.committed)).collect();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for (partition, offset, _) in &records {
        let n = next.entry(*partition).or_default();
        *n = (*n).max(offset + 1);
    }
    let mut v = Verdict {
        unread: offsets
            .iter()
            .map(|p| (p.high - next.get(&p.partition).copied().unwrap_or(0)).max(0) as u64)
            .sum(),
        partitions: offsets,
        ..Verdict::default()
    };
    for (partition, offset, record) in records {
        let Record::Metrics(m) = record else { continue };
        v.records += 1;
        if stored_keys.contains(&(m.origin.instance_id.clone(), m.seq)) {
            v.stored += 1;
        } else if offset < committed.get(&partition).copied().unwrap_or(0) {
            v.lost += 1;
        } else {
            v.pending += 1;
        }
    }
    Ok(v)
}

/// A record with its partition and offset.
type Placed = (i32, i64, Record);

/// Every record of the topic with its partition and offset (by assignment,
/// not by joining a group), and each partition's committed offset for
/// `group` and end.
fn read_topic(
    env: &TestEnv,
    topic: &str,
    partitions: i32,
    group: &str,
) -> Result<(Vec<PartitionOffsets>, Vec<Placed>)> {
    let consumer: BaseConsumer = env
        .kafka_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(all.clone(), Duration::from_secs(15))
        .context("cannot read the group's committed offsets")?;
    let mut offsets = Vec::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(15))?;
        let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        offsets.push(PartitionOffsets {
            partition: p,
            committed,
            high,
        });
    }
    let mut start = TopicPartitionList::new();
    for p in 0..partitions {
        start.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&start)?;
    let mut records = Vec::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until every partition's end, then until a second passes without a
    // record (tansu may report an end one short).
    let mut quiet_since = None;
    while Instant::now() < deadline {
        let at_end = offsets
            .iter()
            .all(|p| next.get(&p.partition).copied().unwrap_or(0) >= p.high);
        if at_end && quiet_since.is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            quiet_since.get_or_insert_with(Instant::now);
            continue;
        };
        quiet_since = None;
        let Ok(msg) = msg else { continue };
        next.insert(msg.partition(), msg.offset() + 1);
        if let Some(payload) = msg.payload() {
            records.push((
                msg.partition(),
                msg.offset(),
                decode(payload, &Limits::default()).context("undecodable record")?,
            ));
        }
    }
    Ok((offsets, records))
}

/// Whether a plain client joining `group` gets partitions of `topic` within
/// `timeout` (the members should be stopped first). If it does not, the
/// broker's group coordinator is stuck; if it does, a stall was the
/// ingester's.
pub fn group_assigns(env: &TestEnv, topic: &str, group: &str, timeout: Duration) -> Result<bool> {
    let consumer: BaseConsumer = env
        .kafka_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(200));
        if consumer.assignment().is_ok_and(|a| a.count() > 0) {
            return Ok(true);
        }
    }
    Ok(false)
}
