//! Reading what reached a topic, decoded with the wire contract.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use spillway_shared::{Limits, Record, decode};

use crate::unique_name;

/// A consumer of one topic from its start, in a group of its own.
pub struct TopicReader {
    consumer: StreamConsumer,
    /// Every record read so far, in arrival order.
    pub records: Vec<Record>,
}

impl TopicReader {
    /// Subscribes to `topic` on `brokers` from the earliest offset.
    pub fn new(brokers: &str, topic: &str) -> Result<TopicReader> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique_name("e2e_reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .context("cannot create consumer")?;
        consumer.subscribe(&[topic])?;
        Ok(TopicReader {
            consumer,
            records: Vec::new(),
        })
    }

    /// Reads until `done(records)` holds or `timeout` passes; returns whether it held.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while !done(&self.records) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match tokio::time::timeout(left.min(Duration::from_secs(1)), self.consumer.recv()).await
            {
                Err(_) => continue,
                // Transient errors (broker restarting) are expected in these tests.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Ok(Ok(msg)) => {
                    let payload = msg.payload().context("message without payload")?;
                    self.records.push(
                        decode(payload, &Limits::default())
                            .context("undecodable record on the topic")?,
                    );
                }
            }
        }
        Ok(true)
    }
}

/// Metrics sequence numbers seen for `instance_id`, sorted and deduplicated.
pub fn metrics_seqs(records: &[Record], instance_id: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Metrics(m) if m.origin.instance_id == instance_id => Some(m.seq),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

/// How many times each tick of `host_id` is on the topic: (instance, seq)
/// and the copies (its records over its parts).
pub fn tick_copies(
    records: &[Record],
    host_id: &str,
) -> std::collections::BTreeMap<(String, u64), u64> {
    let mut seen = std::collections::BTreeMap::new();
    for r in records {
        if let Record::Metrics(m) = r
            && m.origin.host_id == host_id
        {
            let (n, _) = seen
                .entry((m.origin.instance_id.clone(), m.seq))
                .or_insert((0u64, u64::from(m.parts.max(1))));
            *n += 1;
        }
    }
    seen.into_iter()
        .map(|(tick, (n, parts))| (tick, n / parts))
        .collect()
}
