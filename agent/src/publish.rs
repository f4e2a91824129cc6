//! Publishing to Kafka without losing anything silently.
//!
//! Records arrive from the collection loop over a bounded channel and take
//! one of two paths:
//!
//! - **Healthy:** a bounded in-memory queue (bytes) feeds the producer, with a
//!   window of deliveries in flight.
//! - **Degraded:** once a delivery fails, or the memory queue is full, the
//!   queue and every new record go to the disk spool, and the spool is
//!   replayed oldest first. When it is empty again, records take the memory
//!   path again.
//!
//! Invariants:
//! - A record leaves the agent's custody only when the broker acknowledged it
//!   (acks=all, idempotent producer) or when the spool dropped it at its cap,
//!   in which case its sequence number is reported in the next status record.
//! - Everything in the spool is older than everything in the memory queue
//!   (new records go to the spool while it is non-empty).
//! - The spool cursor only moves over records delivered in order: after a
//!   failure, later successes of the same window are not acknowledged in the
//!   spool (they may be sent twice, never lost).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use spillway_shared::SeqRange;
use spillway_shared::kafka;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::producer::{DeliveryOutcome, Producer};
use crate::spool::{Entry, EntryKind, Pos, Spool};
use crate::telemetry::AgentStats;

/// Deliveries in flight at once. Agents send one record per tick; the window
/// matters only when replaying a spool.
const WINDOW: usize = 32;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A producer still failing this long after it was built is replaced.
const PRODUCER_MAX_FAILING: Duration = Duration::from_secs(20);

/// Sequence ranges dropped at the spool cap, kept until a status record that
/// reports them has been *delivered*: a status record can itself wait in the
/// spool, and be dropped there, so reporting is only done when it arrived.
///
/// Each range gets an increasing index. A status record carries every range
/// not yet acknowledged, and its spool entry carries (in its `seq` field) the
/// index just past the last range it reports; delivering it acknowledges the
/// ranges below that index. A range may thus be reported twice, never zero
/// times while the agent runs; readers take the union.
#[derive(Debug, Default)]
pub struct DropLog {
    ranges: VecDeque<(u64, SeqRange)>,
    next_index: u64,
    /// Set when the last range was reported: later drops start a new range.
    sealed: bool,
}

impl DropLog {
    /// Adds dropped sequence numbers, merging adjacent ones into ranges.
    pub fn add(&mut self, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            match self.ranges.back_mut() {
                Some((_, r)) if !self.sealed && r.last.checked_add(1) == Some(seq) => r.last = seq,
                Some((_, r)) if r.first <= seq && seq <= r.last => {}
                _ => {
                    self.sealed = false;
                    self.ranges.push_back((
                        self.next_index,
                        SeqRange {
                            first: seq,
                            last: seq,
                        },
                    ));
                    self.next_index += 1;
                }
            }
        }
    }

    /// The ranges to put in a status record (at most `max`, oldest first),
    /// and the token to acknowledge them with once it is delivered.
    pub fn to_report(&mut self, max: usize) -> (Vec<SeqRange>, u64) {
        let ranges: Vec<(u64, SeqRange)> = self.ranges.iter().take(max).copied().collect();
        // A range still growing must not be acknowledged by a record that
        // saw only part of it: later drops start a new range.
        self.sealed = true;
        let token = ranges.last().map_or(0, |(i, _)| i + 1);
        (ranges.into_iter().map(|(_, r)| r).collect(), token)
    }

    /// A status record reporting every range below `token` was delivered.
    pub fn acknowledge(&mut self, token: u64) {
        while self.ranges.front().is_some_and(|(i, _)| *i < token) {
            self.ranges.pop_front();
        }
    }

    /// Ranges not yet acknowledged.
    pub fn pending(&self) -> Vec<SeqRange> {
        self.ranges.iter().map(|(_, r)| *r).collect()
    }
}

/// Shared handle to the drop log.
pub type SharedDropLog = Arc<Mutex<DropLog>>;

enum Source {
    Memory(Entry),
    /// A memory record already moved to the spool after an earlier failure;
    /// its outcome changes nothing (a success only means a duplicate later).
    Respooled,
    Spool {
        pos: Pos,
        epoch: u64,
        status_token: Option<u64>,
    },
}

struct InFlight {
    source: Source,
    started: Instant,
    delivery: Option<tokio::sync::oneshot::Receiver<DeliveryOutcome>>,
    error: Option<String>,
}

/// The publisher: owns the producer, the memory queue and the spool.
pub struct Publisher {
    producer: Producer,
    topic: String,
    key: String,
    memory: VecDeque<Entry>,
    memory_bytes: usize,
    memory_cap: usize,
    spool: Spool,
    stats: Arc<AgentStats>,
    drops: SharedDropLog,
    /// Bumped at each failure: spool acks from an older epoch are ignored.
    epoch: u64,
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
    /// Whether the last delivery failed (to log transitions only).
    failing: bool,
    /// To build a fresh producer when the current one is wedged.
    client_config: ClientConfig,
    /// When the current producer was built.
    producer_since: Instant,
}

/// Builds the librdkafka producer configuration.
pub fn producer_config(config: &Config) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c.set("bootstrap.servers", &k.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", k.compression.as_str())
        .set("linger.ms", k.linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            k.delivery_timeout.as_millis().to_string(),
        )
        .set(
            "message.max.bytes",
            (k.max_message_bytes + 4096).to_string(),
        );
    c
}

impl Publisher {
    /// Creates the producer. librdkafka connects lazily, so this succeeds
    /// while the broker is down.
    pub fn new(
        config: &Config,
        key: String,
        spool: Spool,
        stats: Arc<AgentStats>,
        drops: SharedDropLog,
    ) -> Result<Publisher, rdkafka::error::KafkaError> {
        let client_config = producer_config(config);
        let producer = Producer::new(&client_config)?;
        stats.set_spool(spool.bytes(), spool.records());
        Ok(Publisher {
            producer,
            topic: config.kafka.topic.clone(),
            key,
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_cap: config.buffer.memory_bytes,
            spool,
            stats,
            drops,
            epoch: 0,
            retry_at: None,
            backoff: BACKOFF_MIN,
            failing: false,
            client_config,
            producer_since: Instant::now(),
        })
    }

    /// Runs until `rx` closes, then flushes for at most `flush_deadline` and
    /// spools whatever was not delivered. Returns the spool for reuse (reload).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Entry>, flush_deadline: Duration) -> Spool {
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        loop {
            self.fill(&mut inflight);
            let retry = self.retry_at;
            tokio::select! {
                entry = rx.recv() => match entry {
                    Some(e) => self.push(e),
                    None => break,
                },
                done = next_settled(&mut inflight), if !inflight.is_empty() => self.settle(done, &mut inflight),
                _ = sleep_until(retry), if retry.is_some() => self.retry_at = None,
            }
        }
        self.shutdown(inflight, flush_deadline).await;
        self.spool
    }

    fn spool_entry(&mut self, entry: &Entry) {
        match self.spool.append(entry) {
            Ok(dropped) => {
                self.stats.add_spooled(1);
                if !dropped.is_empty() {
                    self.stats.add_dropped(dropped.len() as u64);
                    let seqs: Vec<u64> = dropped
                        .iter()
                        .filter(|(k, _)| *k == EntryKind::Metrics)
                        .map(|(_, s)| *s)
                        .collect();
                    warn!(
                        records = dropped.len(),
                        first_seq = seqs.first().copied(),
                        last_seq = seqs.last().copied(),
                        "spool full: oldest records dropped"
                    );
                    lock(&self.drops).add(seqs);
                }
            }
            Err(e) => {
                // The disk refused the record: it is lost, so say so the same
                // way as a drop at the cap.
                warn!(seq = entry.seq, error = %e, "cannot write to spool: record dropped");
                self.stats.add_dropped(1);
                if entry.kind == EntryKind::Metrics {
                    lock(&self.drops).add([entry.seq]);
                }
            }
        }
        self.stats
            .set_spool(self.spool.bytes(), self.spool.records());
    }

    fn spill_memory(&mut self) {
        while let Some(e) = self.memory.pop_front() {
            self.memory_bytes -= e.bytes.len();
            self.spool_entry(&e);
        }
    }

    fn push(&mut self, entry: Entry) {
        let degraded = self.retry_at.is_some() || !self.spool.is_empty();
        if degraded || self.memory_bytes + entry.bytes.len() > self.memory_cap {
            self.spill_memory();
            self.spool_entry(&entry);
        } else {
            self.memory_bytes += entry.bytes.len();
            self.memory.push_back(entry);
        }
    }

    fn send(
        &self,
        entry: &Entry,
    ) -> Result<tokio::sync::oneshot::Receiver<DeliveryOutcome>, String> {
        let mut headers = OwnedHeaders::new_with_capacity(3);
        let record_type = match entry.kind {
            EntryKind::Metrics => "metrics",
            EntryKind::Status => "status",
        };
        for (key, value) in [
            (kafka::HEADER_CONTENT_TYPE, kafka::CONTENT_TYPE),
            (kafka::HEADER_SCHEMA, "1"),
            (kafka::HEADER_TYPE, record_type),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        self.producer
            .send(&self.topic, &self.key, &entry.bytes, headers)
    }

    /// Starts deliveries until the window is full or nothing is waiting.
    fn fill(&mut self, inflight: &mut VecDeque<InFlight>) {
        while inflight.len() < WINDOW && self.retry_at.is_none() {
            let (entry, pos) = if !self.spool.is_empty() {
                match self.spool.next_unsent() {
                    Ok(Some((entry, pos))) => (entry, Some(pos)),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot read spool");
                        break;
                    }
                }
            } else if let Some(entry) = self.memory.pop_front() {
                self.memory_bytes -= entry.bytes.len();
                (entry, None)
            } else {
                break;
            };
            let (delivery, error) = match self.send(&entry) {
                Ok(d) => (Some(d), None),
                Err(e) => (None, Some(e)),
            };
            let source = match pos {
                Some(pos) => Source::Spool {
                    pos,
                    epoch: self.epoch,
                    status_token: (entry.kind == EntryKind::Status).then_some(entry.seq),
                },
                None => Source::Memory(entry),
            };
            inflight.push_back(InFlight {
                source,
                started: Instant::now(),
                delivery,
                error,
            });
        }
    }

    fn settle(&mut self, done: InFlight, inflight: &mut VecDeque<InFlight>) {
        match (&done.source, &done.error) {
            (source, None) => {
                self.stats.record_published(done.started.elapsed());
                self.backoff = BACKOFF_MIN;
                if self.failing {
                    info!("delivery works again");
                    self.failing = false;
                }
                self.producer_since = Instant::now();
                let status_token = match source {
                    Source::Memory(e) if e.kind == EntryKind::Status => Some(e.seq),
                    Source::Spool { status_token, .. } => *status_token,
                    Source::Memory(_) | Source::Respooled => None,
                };
                if let Some(token) = status_token {
                    lock(&self.drops).acknowledge(token);
                }
                if let Source::Spool { pos, epoch, .. } = source
                    && *epoch == self.epoch
                {
                    if let Err(e) = self.spool.ack(*pos, 1) {
                        warn!(error = %e, "cannot persist spool cursor");
                    }
                    self.stats
                        .set_spool(self.spool.bytes(), self.spool.records());
                    if self.spool.is_empty() {
                        info!("spool drained; back to direct delivery");
                    }
                }
            }
            (source, Some(error)) => {
                self.stats.record_publish_error(error.clone());
                if !self.failing {
                    warn!(error = %error, "delivery failed; spooling until the broker is back");
                    self.failing = true;
                }
                // Keep the spool in tick order: the failed record, then the
                // memory records still in flight (older than anything queued),
                // then the memory queue.
                if let Source::Memory(entry) = source {
                    self.spool_entry(entry);
                }
                for f in inflight.iter_mut() {
                    if matches!(f.source, Source::Memory(_))
                        && let Source::Memory(entry) =
                            std::mem::replace(&mut f.source, Source::Respooled)
                    {
                        self.spool_entry(&entry);
                    }
                }
                self.spill_memory();
                if let Source::Spool { epoch, .. } = source
                    && *epoch != self.epoch
                {
                    return; // already rewound for an earlier failure of this window
                }
                self.epoch += 1;
                self.spool.rewind();
                self.replace_producer_if_wedged();
                self.retry_at = Some(tokio::time::Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// A producer that raised a fatal error never delivers again, and one
    /// that kept failing for a long time may hold state the broker forgot
    /// (a broker that came back empty): build a new one. Records are safe in
    /// the spool meanwhile.
    fn replace_producer_if_wedged(&mut self) {
        let fatal = self.producer.fatal_error();
        let stale = self.producer_since.elapsed() >= PRODUCER_MAX_FAILING;
        if fatal.is_none() && !stale {
            return;
        }
        match Producer::new(&self.client_config) {
            Ok(p) => {
                warn!(fatal = fatal.as_deref(), "replacing the Kafka producer");
                self.producer = p;
                self.producer_since = Instant::now();
            }
            Err(e) => warn!(error = %e, "cannot build a new Kafka producer; keeping the old one"),
        }
    }

    async fn shutdown(&mut self, mut inflight: VecDeque<InFlight>, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        // Let the deliveries already started finish while time allows.
        while !inflight.is_empty() {
            match tokio::time::timeout_at(until, next_settled(&mut inflight)).await {
                Ok(done) => self.settle(done, &mut inflight),
                Err(_) => break,
            }
        }
        // Records still in flight from memory may or may not have arrived:
        // spool them (a possible duplicate, never a loss). Those from the
        // spool are still in it, since they were not acknowledged.
        let unresolved: Vec<Entry> = inflight
            .drain(..)
            .filter_map(|f| match f.source {
                Source::Memory(e) => Some(e),
                Source::Spool { .. } | Source::Respooled => None,
            })
            .collect();
        if !unresolved.is_empty() {
            info!(
                records = unresolved.len(),
                "deliveries unresolved at shutdown; spooling them"
            );
        }
        self.spill_memory();
        for e in &unresolved {
            self.spool_entry(e);
        }
        self.stats
            .set_spool(self.spool.bytes(), self.spool.records());
    }
}

/// Waits for the oldest delivery in flight and removes it. Deliveries settle
/// in the order they were started, which keeps the spool cursor honest.
async fn next_settled(inflight: &mut VecDeque<InFlight>) -> InFlight {
    let Some(front) = inflight.front_mut() else {
        return std::future::pending().await;
    };
    if let Some(delivery) = front.delivery.as_mut() {
        let outcome = delivery.await;
        front.delivery = None;
        front.error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("producer shut down before delivery".to_owned()),
        };
    }
    match inflight.pop_front() {
        Some(done) => done,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_log_merges_and_keeps_ranges_until_acknowledged() {
        let mut log = DropLog::default();
        log.add([3, 4, 5, 9]);
        let (ranges, token) = log.to_report(10);
        assert_eq!(
            ranges,
            vec![
                SeqRange { first: 3, last: 5 },
                SeqRange { first: 9, last: 9 }
            ]
        );
        // Dropped after the report: a new range, not an extension of 9..9.
        log.add([10]);
        // The status record was itself lost: the next one reports everything again.
        let (again, token2) = log.to_report(10);
        assert_eq!(again.len(), 3);
        log.acknowledge(token);
        assert_eq!(
            log.pending(),
            vec![SeqRange {
                first: 10,
                last: 10
            }]
        );
        log.acknowledge(token2);
        assert!(log.pending().is_empty());
    }
}
