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
use spillway_shared::lock;
use spillway_shared::retry::Backoff;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::producer::{Deliver, DeliveryOutcome, Producer};
use crate::spool::{Entry, EntryKind, Pos, Spool, SpoolStore};
use crate::telemetry::AgentStats;

/// Deliveries in flight at once. Agents send one record per tick; the window
/// matters only when replaying a spool.
const WINDOW: usize = 32;
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

/// Builds a producer (the publisher replaces one that is wedged).
pub type Connect<P> = Box<dyn Fn() -> Result<P, String> + Send>;

/// The publisher: owns the producer, the memory queue and the spool. Its
/// states: **healthy** (memory queue → producer), **spooling** (a delivery
/// failed or the memory queue is full: everything goes to the spool, and
/// deliveries wait for the backoff), **replaying** (the spool is sent oldest
/// first), and healthy again once the spool is empty.
pub struct Publisher<P: Deliver = Producer, S: SpoolStore = Spool> {
    producer: P,
    topic: String,
    key: String,
    memory: VecDeque<Entry>,
    memory_bytes: usize,
    memory_cap: usize,
    spool: S,
    stats: Arc<AgentStats>,
    drops: SharedDropLog,
    /// Bumped at each failure: spool acks from an older epoch are ignored.
    epoch: u64,
    retry_at: Option<tokio::time::Instant>,
    backoff: Backoff,
    /// Whether the last delivery failed (to log transitions only).
    failing: bool,
    /// Builds a fresh producer when the current one is wedged.
    connect: Connect<P>,
    /// When the current producer was built.
    producer_since: Instant,
}

/// Builds the librdkafka producer configuration.
pub fn producer_config(config: &Config) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    for (key, value) in k.security().properties() {
        c.set(key, value);
    }
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
    /// Creates the Kafka producer. librdkafka connects lazily, so this
    /// succeeds while the broker is down.
    pub fn new(
        config: &Config,
        key: String,
        spool: Spool,
        stats: Arc<AgentStats>,
        drops: SharedDropLog,
    ) -> Result<Publisher, rdkafka::error::KafkaError> {
        let client_config = producer_config(config);
        let producer = Producer::new(&client_config)?;
        let connect: Connect<Producer> =
            Box::new(move || Producer::new(&client_config).map_err(|e| e.to_string()));
        let target = Target {
            topic: config.kafka.topic.clone(),
            key,
            memory_cap: config.buffer.memory_bytes,
        };
        Ok(Publisher::with_parts(
            producer, connect, spool, target, stats, drops,
        ))
    }
}

/// Where a publisher sends, and how much it holds in memory.
pub struct Target {
    /// The topic.
    pub topic: String,
    /// Every message's key (the host id).
    pub key: String,
    /// The memory queue's cap, bytes.
    pub memory_cap: usize,
}

impl<P: Deliver, S: SpoolStore> Publisher<P, S> {
    /// A publisher over any producer and spool.
    pub fn with_parts(
        producer: P,
        connect: Connect<P>,
        spool: S,
        target: Target,
        stats: Arc<AgentStats>,
        drops: SharedDropLog,
    ) -> Publisher<P, S> {
        stats.set_spool(spool.bytes(), spool.records());
        Publisher {
            producer,
            topic: target.topic,
            key: target.key,
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_cap: target.memory_cap,
            spool,
            stats,
            drops,
            epoch: 0,
            retry_at: None,
            backoff: Backoff::new(),
            failing: false,
            connect,
            producer_since: Instant::now(),
        }
    }

    /// Runs until `rx` closes, then flushes for at most `flush_deadline` and
    /// spools whatever was not delivered. Returns the spool for reuse (reload).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Entry>, flush_deadline: Duration) -> S {
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
                self.backoff.reset();
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
                self.retry_at = Some(tokio::time::Instant::now() + self.backoff.advance());
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
        match (self.connect)() {
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A broker the test switches on and off; it records what it received.
    #[derive(Clone, Default)]
    struct Broker(Arc<Mutex<BrokerState>>);

    #[derive(Default)]
    struct BrokerState {
        up: bool,
        delivered: Vec<u64>,
        /// Producers of this generation have raised a fatal error.
        fatal_generation: Option<u32>,
        producers_built: u32,
    }

    impl Broker {
        fn set_up(&self, up: bool) {
            lock(&self.0).up = up;
        }
        fn delivered(&self) -> Vec<u64> {
            lock(&self.0).delivered.clone()
        }
        fn producer(&self) -> FakeProducer {
            let mut b = lock(&self.0);
            let generation = b.producers_built;
            b.producers_built += 1;
            FakeProducer {
                broker: self.clone(),
                generation,
            }
        }
    }

    struct FakeProducer {
        broker: Broker,
        generation: u32,
    }

    impl Deliver for FakeProducer {
        fn send(
            &self,
            _topic: &str,
            _key: &str,
            payload: &[u8],
            _headers: OwnedHeaders,
        ) -> Result<tokio::sync::oneshot::Receiver<DeliveryOutcome>, String> {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let mut b = lock(&self.broker.0);
            let outcome = if b.fatal_generation == Some(self.generation) {
                Err("fatal: producer fenced".to_owned())
            } else if b.up {
                let seq = u64::from_le_bytes(payload.try_into().map_err(|_| "payload")?);
                b.delivered.push(seq);
                Ok(())
            } else {
                Err("broker down".to_owned())
            };
            let _sent = tx.send(outcome);
            Ok(rx)
        }
        fn fatal_error(&self) -> Option<String> {
            (lock(&self.broker.0).fatal_generation == Some(self.generation))
                .then(|| "fenced".to_owned())
        }
    }

    /// A spool in memory that holds at most `cap` records (oldest dropped).
    struct FakeSpool {
        entries: VecDeque<(u64, Entry)>,
        next_index: u64,
        /// Index of the next record to hand out.
        sent: u64,
        cap: usize,
    }

    impl FakeSpool {
        fn new(cap: usize) -> FakeSpool {
            FakeSpool {
                entries: VecDeque::new(),
                next_index: 0,
                sent: 0,
                cap,
            }
        }
        fn base(&self) -> u64 {
            self.entries.front().map_or(self.next_index, |(i, _)| *i)
        }
    }

    impl SpoolStore for FakeSpool {
        fn append(&mut self, entry: &Entry) -> io::Result<Vec<(EntryKind, u64)>> {
            self.entries.push_back((self.next_index, entry.clone()));
            self.next_index += 1;
            let mut dropped = Vec::new();
            while self.entries.len() > self.cap {
                if let Some((_, e)) = self.entries.pop_front() {
                    dropped.push((e.kind, e.seq));
                }
            }
            self.sent = self.sent.max(self.base());
            Ok(dropped)
        }
        fn next_unsent(&mut self) -> io::Result<Option<(Entry, Pos)>> {
            let base = self.base();
            let Some((_, e)) = self.entries.get((self.sent - base) as usize) else {
                return Ok(None);
            };
            self.sent += 1;
            Ok(Some((e.clone(), Pos::new(0, self.sent))))
        }
        fn ack(&mut self, pos: Pos, _records: u64) -> io::Result<()> {
            while self
                .entries
                .front()
                .is_some_and(|(i, _)| Pos::new(0, i + 1) <= pos)
            {
                self.entries.pop_front();
            }
            Ok(())
        }
        fn rewind(&mut self) {
            self.sent = self.base();
        }
        fn is_empty(&self) -> bool {
            self.entries.is_empty()
        }
        fn bytes(&self) -> u64 {
            self.entries.iter().map(|(_, e)| e.bytes.len() as u64).sum()
        }
        fn records(&self) -> u64 {
            self.entries.len() as u64
        }
    }

    fn tick(seq: u64) -> Entry {
        Entry {
            kind: EntryKind::Metrics,
            seq,
            bytes: seq.to_le_bytes().to_vec(),
        }
    }

    struct Harness {
        broker: Broker,
        stats: Arc<AgentStats>,
        drops: SharedDropLog,
        tx: mpsc::Sender<Entry>,
        task: tokio::task::JoinHandle<FakeSpool>,
    }

    fn start(spool_cap: usize, memory_cap: usize) -> Harness {
        let broker = Broker::default();
        broker.set_up(true);
        let stats = Arc::new(AgentStats::default());
        let drops = SharedDropLog::default();
        let connect_to = broker.clone();
        let publisher = Publisher::with_parts(
            broker.producer(),
            Box::new(move || Ok(connect_to.producer())),
            FakeSpool::new(spool_cap),
            Target {
                topic: "t".into(),
                key: "h".into(),
                memory_cap,
            },
            stats.clone(),
            drops.clone(),
        );
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(publisher.run(rx, Duration::from_secs(1)));
        Harness {
            broker,
            stats,
            drops,
            tx,
            task,
        }
    }

    impl Harness {
        async fn send(&self, seqs: std::ops::Range<u64>) {
            for seq in seqs {
                self.tx.send(tick(seq)).await.expect("publisher running");
                // Let the publisher take it (the clock is paused: no waiting).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        async fn wait_for(&self, what: &str, done: impl Fn(&Harness) -> bool) {
            for _ in 0..10_000 {
                if done(self) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what}: delivered {:?}", self.broker.delivered());
        }
        fn spool_records(&self) -> u64 {
            self.stats.snapshot().spool_records
        }
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_spooling_replaying_healthy() {
        let h = start(100, 1 << 20);
        h.send(0..2).await;
        h.wait_for("healthy", |h| h.broker.delivered() == [0, 1])
            .await;
        assert_eq!(h.spool_records(), 0, "healthy: the spool is not used");

        h.broker.set_up(false);
        h.send(2..5).await;
        h.wait_for("spooling", |h| h.spool_records() == 3).await;

        h.broker.set_up(true);
        h.wait_for("replayed", |h| h.spool_records() == 0).await;
        assert_eq!(h.broker.delivered(), [0, 1, 2, 3, 4], "replayed in order");

        h.send(5..6).await;
        h.wait_for("healthy again", |h| h.broker.delivered().ends_with(&[5]))
            .await;
        drop(h.tx);
        let spool = h.task.await.expect("publisher");
        assert!(spool.is_empty());
        assert!(lock(&h.drops).pending().is_empty(), "nothing dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_producer_is_replaced_and_nothing_is_lost() {
        let h = start(100, 1 << 20);
        lock(&h.broker.0).fatal_generation = Some(0);
        h.send(0..3).await;
        h.wait_for("delivered by a new producer", |h| {
            h.broker.delivered() == [0, 1, 2]
        })
        .await;
        assert_eq!(lock(&h.broker.0).producers_built, 2, "replaced once");
        assert_eq!(h.spool_records(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_spool_drops_the_oldest_and_reports_them() {
        let h = start(3, 1 << 20);
        h.broker.set_up(false);
        h.send(0..8).await;
        h.wait_for("spool at its cap", |h| h.spool_records() == 3)
            .await;
        assert_eq!(
            lock(&h.drops).pending(),
            [SeqRange { first: 0, last: 4 }],
            "the dropped ticks are reported"
        );
        h.broker.set_up(true);
        h.wait_for("the rest delivered", |h| h.spool_records() == 0)
            .await;
        assert_eq!(h.broker.delivered(), [5, 6, 7]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_memory_queue_spools() {
        // Room for one record in memory: the second goes to the spool.
        let h = start(100, 8);
        h.broker.set_up(false);
        h.send(0..1).await;
        h.broker.set_up(true);
        h.send(1..4).await;
        h.wait_for("all delivered", |h| h.broker.delivered().len() >= 4)
            .await;
        let mut got = h.broker.delivered();
        got.dedup();
        assert_eq!(got, [0, 1, 2, 3], "in order, none lost");
    }

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
