//! The Kafka side of the pipeline: one dedicated thread owns the consumer.
//!
//! It polls, hands records in chunks to the decoder threads, applies the
//! pipeline's pause/resume wish to the assigned partitions, commits the
//! offsets the pipeline sends it, and runs the rebalance handshake:
//!
//! - On **revoke**, librdkafka calls us on this thread before the partitions
//!   go. We send [`Event::Revoke`] through the same path as records, and wait
//!   (up to `pipeline.rebalance_timeout`) for the pipeline to make every
//!   record of those partitions durable and reply with their watermarks,
//!   which we commit synchronously before returning. The next owner then
//!   starts where we stopped: no loss, and no duplicate in the normal case.
//! - On **assign**, partitions join paused if the pipeline is paused (or
//!   the partition is stalled, see `stall.rs`).
//!
//! Two wishes pause partitions: the memory budget pauses all of them; a
//! stalled partition (its rows rejected in a row) is paused on its own.
//!
//! Polling never stops while the pipeline is full: pausing the partitions
//! (rather than not polling) keeps rebalances served and the member inside
//! `max.poll.interval.ms`, however long ClickHouse is away.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use spillway_shared::kafka_log::KafkaLog;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::pipeline::message::PartitionId;
use crate::pipeline::message::{Chunk, Command, Event, Raw};
use crate::pipeline::offsets::Commit;
use crate::pipeline::stall::Stalls;
use crate::telemetry::Stats;
use spillway_shared::lock;

/// Builds the consumer configuration.
pub(crate) fn consumer_config(config: &Config) -> ClientConfig {
    let k = &config.kafka;
    let mut c = k.client_config();
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A topic created after start-up is picked up within 30 s.
        .set("topic.metadata.refresh.interval.ms", "30000")
        // Per-partition lag for the metrics.
        .set("statistics.interval.ms", "5000")
        .set(
            "session.timeout.ms",
            k.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (k.session_timeout.as_millis() / 3).max(100).to_string(),
        )
        // librdkafka's own prefetch queue comes on top of the budget: keep it
        // to a quarter of the budget, between 1 and 64 MiB.
        .set(
            "queued.max.messages.kbytes",
            (config.pipeline.memory_budget_bytes / 4 / 1024)
                .clamp(1024, 65536)
                .to_string(),
        );
    c
}

/// What became of a polled record.
#[derive(Debug, PartialEq)]
enum Fed {
    Taken,
    /// Fetch this partition again from this offset.
    Seek(String, i32, i64),
    /// The decoders are gone.
    Gone,
}

/// How far back the first fetch of a rewind starts; each further one goes
/// four times as far.
const REWIND_STEP: i64 = 64;

/// Fetches from further back before a gap is believed. Tansu's skip can
/// recur on any refetch (a resume after a pause refetches from the current
/// position, which may be mid-batch), so one failed rewind proves nothing;
/// a real gap (compaction, transaction markers) costs this many extra
/// fetches, the last from 64 * 4^5 = 65,536 offsets back.
const MAX_REWINDS: u32 = 6;

/// A partition being fetched again from further back.
struct Rewind {
    step: i64,
    /// Seeks so far for this gap.
    attempts: u32,
}

struct Feed {
    stats: Arc<Stats>,
    /// Partitions being fetched again from further back.
    rewinds: HashMap<String, HashMap<i32, Rewind>>,
    /// Per topic and partition, one past the last offset handed on: where
    /// fetching must continue after a pause.
    positions: HashMap<String, HashMap<i32, i64>>,
    chunk: Chunk,
    /// Chunks handed to decoders so far.
    sent: u64,
    next_decoder: usize,
    decoders: Vec<SyncSender<Chunk>>,
}

impl Feed {
    const MAX_RECORDS: usize = 256;
    const MAX_BYTES: usize = 512 * 1024;

    /// Takes a polled record in offset order. A record handed on already
    /// (librdkafka fetches again from an older position after a pause) is
    /// dropped. A record past the expected offset starts a rewind: a broker
    /// asked to fetch from the middle of a record batch must return that
    /// batch, but some (tansu 0.6) return the next one, which would skip
    /// records; fetching again from further back recovers them. A gap that
    /// survives [`MAX_REWINDS`] fetches from further and further back is
    /// taken as real (compaction, transactions), logged and counted.
    fn push(&mut self, raw: Raw) -> Fed {
        let key = (raw.topic.as_str(), raw.partition);
        let expected = self
            .positions
            .get(key.0)
            .and_then(|p| p.get(&key.1))
            .copied()
            .unwrap_or(raw.offset);
        // Rewinds are rare: skip their lookups on the per-record path.
        let rewind = if self.rewinds.is_empty() {
            None
        } else {
            self.rewinds.get_mut(key.0).and_then(|r| r.get_mut(&key.1))
        };
        if raw.offset < expected {
            return Fed::Taken;
        }
        if raw.offset > expected {
            match rewind {
                Some(r) if r.attempts >= MAX_REWINDS => {
                    warn!(topic = %raw.topic, partition = raw.partition, first_missing = expected,
                          next = raw.offset, rewinds = r.attempts,
                          "offsets missing from the partition (compacted or aborted)");
                    self.stats
                        .offsets_missing
                        .inc_by(u64::try_from(raw.offset - expected).unwrap_or(0));
                }
                Some(r) => {
                    r.step = r.step.saturating_mul(4);
                    r.attempts += 1;
                    let from = expected.saturating_sub(r.step).max(0);
                    return Fed::Seek(raw.topic, raw.partition, from);
                }
                None => {
                    debug!(topic = %raw.topic, partition = raw.partition, offset = raw.offset,
                           expected, "offset gap; fetching again from further back");
                    let r = Rewind {
                        step: REWIND_STEP,
                        attempts: 1,
                    };
                    self.rewinds
                        .entry(raw.topic.clone())
                        .or_default()
                        .insert(raw.partition, r);
                    let from = expected.saturating_sub(REWIND_STEP).max(0);
                    return Fed::Seek(raw.topic, raw.partition, from);
                }
            }
        }
        if let Some(r) = self.rewinds.get_mut(key.0) {
            r.remove(&key.1);
            if r.is_empty() {
                self.rewinds.remove(key.0);
            }
        }
        match self.positions.get_mut(key.0) {
            Some(p) => {
                p.insert(raw.partition, raw.offset + 1);
            }
            None => {
                self.positions
                    .entry(raw.topic.clone())
                    .or_default()
                    .insert(raw.partition, raw.offset + 1);
            }
        }
        self.chunk.bytes += raw.payload.len();
        self.chunk.records.push(raw);
        if self.chunk.records.len() >= Self::MAX_RECORDS || self.chunk.bytes >= Self::MAX_BYTES {
            return self.send();
        }
        Fed::Taken
    }

    /// Hands the open chunk to the next decoder.
    fn send(&mut self) -> Fed {
        if self.chunk.records.is_empty() {
            return Fed::Taken;
        }
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.number = self.sent;
        let n = self.decoders.len();
        let target = self.next_decoder % n;
        self.next_decoder = self.next_decoder.wrapping_add(1);
        if self.decoders[target].send(chunk).is_err() {
            return Fed::Gone;
        }
        self.sent += 1;
        Fed::Taken
    }
}

/// State shared by the poll loop and the rebalance callbacks (both run on
/// the poll thread; the mutex is never contended).
pub(crate) struct Ctx {
    feed: Mutex<Feed>,
    events: mpsc::Sender<Event>,
    /// Whether the memory budget has every assigned partition paused now.
    paused: AtomicBool,
    /// The partitions paused now, for either reason.
    paused_set: Mutex<BTreeSet<PartitionId>>,
    stalls: Arc<Stalls>,
    /// Set when closing: revocations then need no handshake.
    closing: AtomicBool,
    rebalance_timeout: Duration,
    stats: Arc<Stats>,
    log: KafkaLog,
    /// Since when this member has had no assignment (at start, and after a
    /// revocation that left it none): a group that never completes a
    /// rebalance is said out loud (see [`AssignmentWatch`]).
    unassigned: Mutex<AssignmentWatch>,
}

/// How long a member goes without an assignment before it says so.
const UNASSIGNED_WARNING: Duration = Duration::from_secs(60);

/// Whether this member is waiting for the group to give it partitions, and
/// since when; a completed rebalance (even one that gives it none, when
/// the group has more members than partitions) ends the wait.
#[derive(Debug)]
struct AssignmentWatch {
    since: Option<Instant>,
    warned: Option<Instant>,
}

impl AssignmentWatch {
    fn waiting(now: Instant) -> AssignmentWatch {
        AssignmentWatch {
            since: Some(now),
            warned: None,
        }
    }

    /// How long the wait has lasted, when it is time to say so again (once
    /// past [`UNASSIGNED_WARNING`], then every as long).
    fn overdue(&mut self, now: Instant) -> Option<Duration> {
        let since = self.since?;
        let waited = now.saturating_duration_since(since);
        let last = self.warned.unwrap_or(since);
        if now.saturating_duration_since(last) < UNASSIGNED_WARNING {
            return None;
        }
        self.warned = Some(now);
        Some(waited)
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }

    /// librdkafka's statistics (every 5 s): the lag of each assigned
    /// partition behind its committed offset.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lags = Vec::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lags.push((topic.clone(), *partition, p.consumer_lag));
                }
            }
        }
        self.stats.set_consumer_lag(&lags);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let tpl = match rebalance {
            Rebalance::Revoke(tpl) => tpl,
            Rebalance::Assign(_) => return,
            Rebalance::Error(e) => {
                // Said once, here; post_rebalance sees the same error.
                self.stats.rebalance_errors.inc();
                warn!(error = %e, "the rebalance failed; the group will rebalance again");
                return;
            }
        };
        let partitions: Vec<PartitionId> = tpl
            .elements()
            .iter()
            .map(|e| PartitionId::new(e.topic(), e.partition()))
            .collect();
        info!(partitions = partitions.len(), "partitions revoked");
        {
            let mut feed = lock(&self.feed);
            for id in &partitions {
                if let Some(p) = feed.positions.get_mut(id.topic.as_str()) {
                    p.remove(&id.partition);
                }
                if let Some(r) = feed.rewinds.get_mut(id.topic.as_str()) {
                    r.remove(&id.partition);
                }
            }
        }
        self.stats
            .assigned_partitions
            .dec_by(partitions.len() as i64);
        if self.stats.assigned_partitions.get() <= 0 {
            *lock(&self.unassigned) = AssignmentWatch::waiting(Instant::now());
        }
        if self.closing.load(Ordering::Relaxed) || partitions.is_empty() {
            return;
        }
        let chunks = {
            let mut feed = lock(&self.feed);
            feed.send();
            feed.sent
        };
        let (reply, replied) = std::sync::mpsc::sync_channel(1);
        let event = Event::Revoke {
            partitions,
            chunks,
            reply,
        };
        if self.events.blocking_send(event).is_err() {
            return;
        }
        // The pipeline keeps its own deadline; this one only guards against
        // a pipeline that is gone.
        match replied.recv_timeout(self.rebalance_timeout + Duration::from_secs(5)) {
            Ok(offsets) => commit(consumer, &offsets, CommitMode::Sync, &self.stats),
            Err(_) => {
                warn!("revoked partitions were not drained; their records will be read again")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            info!(partitions = tpl.count(), "partitions assigned");
            lock(&self.unassigned).since = None;
            self.stats.assigned_partitions.inc_by(tpl.count() as i64);
            self.stats.joined.store(true, Ordering::Relaxed);
            // Start from the committed offsets, so that a broker that skips
            // part of the first batch is caught (see `Feed::push`).
            match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
                Ok(committed) => {
                    // A partition its group never committed starts at its
                    // earliest offset (`auto.offset.reset`). Expect that
                    // offset, so that a broker skipping the first batch
                    // (seen after tansu restarted empty, with the consumer
                    // still holding its old position) is caught too.
                    let mut starts = Vec::new();
                    for e in committed.elements() {
                        let start = match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => consumer
                                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
                                .map(|(low, _)| low)
                                .inspect_err(|err| warn!(topic = e.topic(), partition = e.partition(),
                                                         error = %err, "cannot read the earliest offset"))
                                .ok(),
                        };
                        starts.push(start);
                    }
                    let mut assigned = Vec::new();
                    {
                        let mut feed = lock(&self.feed);
                        for (e, start) in committed.elements().iter().zip(starts) {
                            if let Some(o) = start {
                                feed.positions
                                    .entry(e.topic().to_owned())
                                    .or_default()
                                    .insert(e.partition(), o);
                            }
                            assigned.push((PartitionId::new(e.topic(), e.partition()), start));
                        }
                    }
                    self.assigned(assigned);
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the committed offsets");
                    let assigned = tpl
                        .elements()
                        .iter()
                        .map(|e| (PartitionId::new(e.topic(), e.partition()), None))
                        .collect();
                    self.assigned(assigned);
                }
            }
            let all = self.paused.load(Ordering::Relaxed);
            let mut pause = TopicPartitionList::new();
            let mut paused = lock(&self.paused_set);
            for e in tpl.elements() {
                let key = PartitionId::new(e.topic(), e.partition());
                if all || self.stalls.is_stalled(&key) {
                    pause.add_partition(e.topic(), e.partition());
                    paused.insert(key);
                } else {
                    paused.remove(&key);
                }
            }
            if pause.count() > 0
                && let Err(e) = consumer.pause(&pause)
            {
                warn!(error = %e, "cannot pause newly assigned partitions");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        // Async commits report here; a failure is repaired by the next
        // commit, which carries the same or a later watermark.
        if let Err(e) = result {
            warn!(error = %e, partitions = offsets.count(), "offset commit failed");
            self.stats.commit_errors.inc();
        }
    }
}

impl Ctx {
    /// Tells the pipeline which partitions it now owns and where each
    /// starts, before any of their records is polled: it reads their
    /// journaled ranges before taking their records.
    fn assigned(&self, partitions: Vec<(PartitionId, Option<i64>)>) {
        if self
            .events
            .blocking_send(Event::Assigned { partitions })
            .is_err()
        {
            debug!("the pipeline is gone; assignment not announced");
        }
    }
}

/// Handles to the poll thread.
pub(crate) struct Poller {
    pub(crate) commands: SyncSender<Command>,
    pub(crate) pause: Arc<AtomicBool>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

/// Creates the consumer, subscribes, and starts the poll thread.
pub(crate) fn start(
    config: rdkafka::ClientConfig,
    topics: &[String],
    decoders: Vec<SyncSender<Chunk>>,
    events: mpsc::Sender<Event>,
    rebalance_timeout: Duration,
    stalls: Arc<Stalls>,
    stats: Arc<Stats>,
) -> anyhow::Result<Poller> {
    let ctx = Ctx {
        feed: Mutex::new(Feed {
            stats: stats.clone(),
            rewinds: HashMap::new(),
            positions: HashMap::new(),
            chunk: Chunk::default(),
            sent: 0,
            next_decoder: 0,
            decoders,
        }),
        events,
        paused: AtomicBool::new(false),
        paused_set: Mutex::default(),
        stalls,
        closing: AtomicBool::new(false),
        rebalance_timeout,
        stats: stats.clone(),
        log: KafkaLog::default(),
        unassigned: Mutex::new(AssignmentWatch::waiting(Instant::now())),
    };
    let consumer: BaseConsumer<Ctx> = config.create_with_context(ctx)?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let (commands, command_rx) = std::sync::mpsc::sync_channel(16);
    let pause = Arc::new(AtomicBool::new(false));
    let wish = pause.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-poll".into())
        .spawn(move || poll_loop(consumer, command_rx, wish, stats))?;
    Ok(Poller {
        commands,
        pause,
        thread,
    })
}

fn poll_loop(
    consumer: BaseConsumer<Ctx>,
    commands: Receiver<Command>,
    pause: Arc<AtomicBool>,
    stats: Arc<Stats>,
) {
    let ctx = consumer.context();
    let mut stalls_seen = ctx.stalls.generation();
    loop {
        loop {
            match commands.try_recv() {
                Ok(Command::Commit(offsets)) => {
                    commit(&consumer, &offsets, CommitMode::Async, &stats);
                }
                Ok(Command::Close(offsets)) => {
                    close(&consumer, &offsets, &stats);
                    return;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    close(&consumer, &[], &stats);
                    return;
                }
            }
        }
        let wanted = pause.load(Ordering::Relaxed);
        let stalls_now = ctx.stalls.generation();
        if wanted != ctx.paused.load(Ordering::Relaxed) || stalls_now != stalls_seen {
            stalls_seen = stalls_now;
            set_paused(&consumer, wanted);
        }
        let fed = match consumer.poll(Duration::from_millis(50)) {
            None => {
                // A member without partitions polls nothing: checked here.
                warn_if_unassigned(ctx, &stats);
                lock(&ctx.feed).send()
            }
            Some(Err(e)) => {
                warn!(error = %e, "consumer error");
                stats.consumer_errors.inc();
                Fed::Taken
            }
            Some(Ok(m)) => lock(&ctx.feed).push(Raw {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            }),
        };
        match fed {
            Fed::Taken => {}
            Fed::Seek(topic, partition, offset) => {
                stats.fetch_rewinds.inc();
                if let Err(e) = consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                ) {
                    warn!(%topic, partition, offset, error = %e, "cannot seek back over an offset gap");
                }
            }
            Fed::Gone => {
                // The pipeline stopped without closing us.
                close(&consumer, &[], &stats);
                return;
            }
        }
    }
}

/// Says so, once a minute, while the member has waited more than
/// [`UNASSIGNED_WARNING`] for an assignment.
fn warn_if_unassigned(ctx: &Ctx, stats: &Stats) {
    if let Some(waited) = lock(&ctx.unassigned).overdue(Instant::now()) {
        warn!(
            waited = ?waited,
            rebalance_errors = stats.rebalance_errors.get(),
            "no partition assignment from the group's coordinator: the group never \
             completes a rebalance (a broker whose coordinator is stuck, or a member that \
             left without leaving the group); nothing is consumed until it does"
        );
    }
}

/// Pauses every assigned partition when `all`, else only the stalled ones,
/// and resumes the rest; only partitions whose state changes are touched.
fn set_paused(consumer: &BaseConsumer<Ctx>, all: bool) {
    let ctx = consumer.context();
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot read the assignment to pause or resume it");
            return;
        }
    };
    let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
    let mut paused = lock(&ctx.paused_set);
    let mut want = BTreeSet::new();
    for e in assignment.elements() {
        let key = PartitionId::new(e.topic(), e.partition());
        let stalled = ctx.stalls.is_stalled(&key);
        if all || stalled {
            if !paused.contains(&key) {
                pause.add_partition(e.topic(), e.partition());
            }
            want.insert(key);
        } else if paused.contains(&key) {
            resume.add_partition(e.topic(), e.partition());
        }
    }
    let mut result = Ok(());
    if pause.count() > 0 {
        result = consumer.pause(&pause);
    }
    if result.is_ok() && resume.count() > 0 {
        result = consumer.resume(&resume);
    }
    match result {
        Ok(()) => {
            *paused = want;
            drop(paused);
            let was = ctx.paused.swap(all, Ordering::Relaxed);
            if was != all {
                info!(
                    partitions = assignment.count(),
                    "{}",
                    if all {
                        "memory budget full: consumption paused (partitions paused)"
                    } else {
                        "consumption resumed (partitions resumed)"
                    }
                );
            }
            if !all && (pause.count() > 0 || resume.count() > 0) {
                info!(
                    paused = pause.count(),
                    resumed = resume.count(),
                    stalled = ctx.stalls.count(),
                    "stalled partitions paused or resumed"
                );
            }
        }
        Err(e) => warn!(error = %e, all, "cannot pause or resume partitions"),
    }
}

fn close(consumer: &BaseConsumer<Ctx>, offsets: &[Commit], stats: &Stats) {
    commit(consumer, offsets, CommitMode::Sync, stats);
    consumer.context().closing.store(true, Ordering::Relaxed);
    consumer.unsubscribe();
    // Serve the revocation and leave the group before the consumer drops.
    for _ in 0..20 {
        if consumer.poll(Duration::from_millis(50)).is_none()
            && consumer.assignment().map_or(true, |a| a.count() == 0)
        {
            break;
        }
    }
    info!("left the consumer group");
}

fn commit(consumer: &BaseConsumer<Ctx>, offsets: &[Commit], mode: CommitMode, stats: &Stats) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for c in offsets {
        if let Err(e) = tpl.add_partition_offset(&c.topic, c.partition, Offset::Offset(c.offset)) {
            warn!(error = %e, "cannot build the commit list");
            return;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            debug!(partitions = offsets.len(), ?mode, "committed");
            stats.commits.inc();
        }
        Err(e) => {
            // The next commit carries the same or a later watermark.
            warn!(error = %e, "commit failed");
            stats.commit_errors.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_without_an_assignment_says_so_after_a_minute_then_every_minute() {
        let start = Instant::now();
        let mut watch = AssignmentWatch::waiting(start);
        assert_eq!(watch.overdue(start + Duration::from_secs(59)), None);
        let at = start + UNASSIGNED_WARNING;
        assert_eq!(watch.overdue(at), Some(UNASSIGNED_WARNING));
        assert_eq!(watch.overdue(at + Duration::from_secs(30)), None);
        let again = at + UNASSIGNED_WARNING;
        assert_eq!(watch.overdue(again), Some(2 * UNASSIGNED_WARNING));
        // An assignment (even of no partition) ends the wait.
        watch.since = None;
        assert_eq!(watch.overdue(again + 3 * UNASSIGNED_WARNING), None);
    }

    fn feed() -> (Feed, Receiver<Chunk>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let feed = Feed {
            stats: Arc::new(Stats::new()),
            rewinds: HashMap::new(),
            positions: HashMap::new(),
            chunk: Chunk::default(),
            sent: 0,
            next_decoder: 0,
            decoders: vec![tx],
        };
        (feed, rx)
    }

    fn raw(offset: i64) -> Raw {
        Raw {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: vec![0x80],
        }
    }

    /// Offsets handed on, in order.
    fn handed(feed: &mut Feed, rx: &Receiver<Chunk>) -> Vec<i64> {
        assert_eq!(feed.send(), Fed::Taken);
        rx.try_iter()
            .flat_map(|c| c.records)
            .map(|r| r.offset)
            .collect()
    }

    #[test]
    fn refetched_records_are_dropped() {
        let (mut f, rx) = feed();
        for o in [10, 11, 12, 11, 12, 13] {
            assert_eq!(f.push(raw(o)), Fed::Taken);
        }
        assert_eq!(handed(&mut f, &rx), vec![10, 11, 12, 13]);
    }

    #[test]
    fn a_skipped_batch_is_fetched_again_from_further_back() {
        let (mut f, rx) = feed();
        for o in 1000..=1200 {
            f.push(raw(o));
        }
        // A resume refetched from mid-batch and the broker skipped 1201..=1299.
        assert_eq!(f.push(raw(1300)), Fed::Seek("t".into(), 0, 1201 - 64));
        // The refetch lands mid-batch again: go four times further back.
        assert_eq!(f.push(raw(1300)), Fed::Seek("t".into(), 0, 1201 - 256));
        for o in 1100..=1310 {
            assert_eq!(f.push(raw(o)), Fed::Taken);
        }
        assert_eq!(handed(&mut f, &rx), (1000..=1310).collect::<Vec<_>>());
        assert!(f.rewinds.is_empty());
        assert_eq!(f.stats.offsets_missing.get(), 0);
    }

    #[test]
    fn a_gap_is_believed_only_after_every_rewind() {
        let (mut f, rx) = feed();
        f.push(raw(5000));
        let mut seeks = Vec::new();
        loop {
            // Each refetch returns the records before the gap, then the jump.
            match f.push(raw(5100)) {
                Fed::Seek(_, _, from) => seeks.push(from),
                Fed::Taken => break,
                Fed::Gone => unreachable!(),
            }
            for o in 4990..=5000 {
                f.push(raw(o));
            }
        }
        assert_eq!(seeks, vec![4937, 4745, 3977, 905, 0, 0]);
        assert_eq!(handed(&mut f, &rx), vec![5000, 5100]);
        assert_eq!(f.stats.offsets_missing.get(), 99);
        assert!(f.rewinds.is_empty());
    }
}
