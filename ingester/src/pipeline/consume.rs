//! The pipeline: poll thread → decoder threads → batches per (shard, table)
//! → insert workers → watermark → commit.
//!
//! One task owns the batches, the watermarks and the accounting; every other
//! stage is a fixed set of threads or tasks joined by bounded queues, so
//! nothing is spawned per message and nothing grows without bound:
//!
//! - Bytes of consumed records not yet durable (payload and rows) are counted
//!   against `pipeline.memory_budget_bytes`. At the budget the pipeline asks
//!   the poll thread to **pause** the assigned partitions; under half of it,
//!   to resume them. The poll thread keeps polling while paused, so the
//!   member stays in the group however long ClickHouse is away.
//! - A shard that is down keeps its batches (retrying) while the other
//!   shards keep flowing, until the budget pauses consumption.
//!
//! Each partition's records are cut into ranges (`ranges.rs`); a range is
//! journaled before its INSERTs go out (`journal.rs`), its INSERTs carry its
//! deduplication token, and its records finish together once all of it is
//! durable. Offsets are committed only up to the contiguous watermark of
//! finished records (`offsets.rs`), so always at the start of a range, where
//! the next owner starts rebuilding the journaled ranges. A revoked
//! partition is drained and committed before it goes: see `poll.rs`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::batch::Batch;
use crate::pipeline::decode;
use crate::pipeline::dlq::{self, DeadLetters, Letter};
use crate::pipeline::flow::{Budget, InOrder};
use crate::pipeline::insert::Worker;
use crate::pipeline::journal::{
    self, JournalDone, JournalIdentity, JournalJob, Owned, ToRead, ToRebuild,
};
use crate::pipeline::message::{Command, Decoded, Done, Event, PartitionId};
use crate::pipeline::offsets::{Commit, Watermarks};
use crate::pipeline::poll;
use crate::pipeline::quality::{self, Counters, Quality};
use crate::pipeline::ranges::{self, Closed, Open, Partition, close};
use crate::pipeline::stall::Stalls;
use crate::sink::Sink;
use crate::sink::rows::Rows;
use crate::telemetry::Stats;
use spillway_shared::{lock, now_ms};

/// How often the event loop closes aged batches, commits and accounts.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(100);
/// After the shutdown deadline, how long leaving the group may still take.
const KAFKA_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Whether the loop is draining a revocation, as Kafka's cooperative
/// protocol needs: the revoked partitions' records already polled are made
/// durable before their offsets are committed and the partitions let go.
enum Revoke {
    /// No revocation pending.
    Consuming,
    /// Revoked partitions being drained: answered once their records are
    /// durable, at the deadline, or at once on shutdown.
    Draining(Draining),
}

/// A revocation waiting for its partitions' records to become durable.
struct Draining {
    /// The partitions revoked.
    partitions: Vec<PartitionId>,
    /// Chunks polled before the revocation: each must be handed on first.
    chunks: u64,
    /// Where the watermarks to commit go (the poll thread waits on it).
    reply: std::sync::mpsc::SyncSender<Vec<Commit>>,
    /// When to answer even if not drained.
    deadline: Instant,
}

/// When [`State::answer_revoke`] may answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Once drained, or at the revocation's deadline.
    WhenDrained,
    /// Now, drained or not (shutdown).
    Now,
}

/// What one turn of the event loop came to.
enum Step {
    /// Go on.
    Continue,
    /// Shutdown was asked for.
    Stop,
    /// The Kafka side stopped: drain, then fail.
    Failed(anyhow::Error),
}

/// The running pipeline: its threads and tasks, the queues between them and
/// the state the event loop owns. [`run`] is `start`, `step` until it stops,
/// then `drain`.
struct Pipeline {
    config: Config,
    stats: Arc<Stats>,
    /// Fired on SIGTERM/SIGINT: the loop stops taking events and drains.
    shutdown: CancellationToken,
    /// What the loop owns: ranges, batches, watermarks, the accounting.
    state: State,
    /// From the poll thread and the decoders: assignments, revocations and
    /// decoded chunks, in order.
    events: mpsc::Receiver<Event>,
    /// Joined on the way out, once every sender is gone.
    decoder_threads: Vec<std::thread::JoinHandle<()>>,
    /// The consumer thread: its pause flag and its command queue (commits,
    /// close).
    poller: poll::Poller,
    /// One queue per shard, to that shard's pool of insert workers.
    shard_txs: Vec<mpsc::Sender<Batch>>,
    /// To the dead-letter worker.
    letters_tx: mpsc::Sender<Letter>,
    /// To the journal worker: one job at a time.
    journal_tx: mpsc::Sender<JournalJob>,
    /// From insert and dead-letter workers: records made durable.
    done_rx: mpsc::Receiver<Done>,
    /// From the journal worker: a job finished.
    journal_done: mpsc::Receiver<JournalDone>,
    /// Every worker task, waited for on shutdown.
    workers: tokio_util::task::TaskTracker,
    /// When to pause and resume consumption.
    budget: Budget,
    /// Housekeeping: aged batches, commits, the accounting period.
    tick: tokio::time::Interval,
    /// When offsets were last handed over for commit (at most one commit per
    /// `kafka.commit_interval`).
    last_commit: Instant,
    /// When the last accounting period ended.
    last_summary: Instant,
}

/// Runs the pipeline until `shutdown`, then drains it: every batch is
/// flushed and made durable (or left uncommitted at the deadline) and the
/// final offsets are committed as the member leaves the group.
pub async fn run<S: Sink + Clone>(
    config: Config,
    sink: S,
    dlq: DeadLetters,
    stats: Arc<Stats>,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start(config, sink, dlq, stats, tracer, shutdown)?;
    let failure = loop {
        match pipeline.step().await {
            Step::Continue => {}
            Step::Stop => break None,
            Step::Failed(e) => break Some(e),
        }
    };
    pipeline.drain().await;
    failure.map_or(Ok(()), Err)
}

impl Pipeline {
    /// Starts the poll thread, the decoder threads, the insert workers per
    /// shard, the dead-letter worker and the journal worker.
    fn start<S: Sink + Clone>(
        config: Config,
        sink: S,
        dlq: DeadLetters,
        stats: Arc<Stats>,
        tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Pipeline> {
        let shards = config.clickhouse.shards.len();
        let decoders = config.pipeline.decode_threads;
        // Decoded chunks are several times their records' size: queue few.
        let (events_tx, events) = mpsc::channel::<Event>(decoders + 1);
        let precision = crate::precision::Precision::new(&config.storage.precision);
        let decode::Decoders { inputs, threads } =
            decode::start(decoders, shards, &precision, events_tx.clone())?;
        let stalls = Arc::new(Stalls::new(config.pipeline.rejects_before_pause));
        let poller = poll::start(
            poll::consumer_config(&config),
            &config.kafka.topics,
            inputs,
            events_tx,
            config.pipeline.rebalance_timeout,
            stalls.clone(),
            stats.clone(),
        )?;
        info!(topics = ?config.kafka.topics, group = %config.kafka.group_id, shards, decoders,
              "consuming");

        // Every batch or letter in flight can report back without blocking.
        let concurrency = config.pipeline.insert_concurrency;
        let (done_tx, done_rx) = mpsc::channel::<Done>(shards * concurrency * 4 + 16);
        let workers = tokio_util::task::TaskTracker::new();
        let shard_txs = Worker {
            sink: sink.clone(),
            dlq: dlq.clone(),
            done: done_tx.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            stalls: stalls.clone(),
            tracer,
        }
        .spawn_pools(&workers, shards, concurrency);
        let letters_tx = dlq::spawn(&workers, dlq, done_tx, stats.clone(), shutdown.clone());
        let owned: Owned = Arc::default();
        let (journal_tx, journal_done) = journal::spawn(
            &workers,
            sink,
            JournalIdentity {
                group: config.kafka.group_id.clone(),
                ingester: config.quality.ingester_id(),
            },
            owned.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        workers.close();

        let state = State::new(&config, owned, now_ms());
        Ok(Pipeline {
            budget: Budget::new(config.pipeline.memory_budget_bytes),
            tick: tokio::time::interval(HOUSEKEEPING_EVERY),
            last_commit: Instant::now(),
            last_summary: Instant::now(),
            config,
            stats,
            shutdown,
            state,
            events,
            decoder_threads: threads,
            poller,
            shard_txs,
            letters_tx,
            journal_tx,
            done_rx,
            journal_done,
            workers,
        })
    }

    /// One turn of the event loop: hand out what is ready, pause or resume
    /// consumption, then wait for the next event and take it.
    async fn step(&mut self) -> Step {
        let state = &mut self.state;
        let config = &self.config;
        let stats = &self.stats;
        state.dispatch(&self.shard_txs, &self.letters_tx, &self.journal_tx);
        state.answer_revoke(Answer::WhenDrained);
        let paused = self
            .budget
            .update(state.in_flight_bytes, state.rebuilding());
        self.poller.pause.store(paused, Ordering::Relaxed);
        stats.consumption_paused.set(i64::from(paused));
        tokio::select! {
            _ = self.shutdown.cancelled() => return Step::Stop,
            event = self.events.recv() => match event {
                Some(Event::Decoded { chunk, records }) => {
                    for records in state.in_order.push(chunk, records) {
                        for d in records {
                            state.accept(d, config, stats);
                        }
                    }
                }
                Some(Event::Assigned { partitions }) => state.assigned(partitions),
                Some(Event::Revoke { partitions, chunks, reply }) => {
                    state.flush_all();
                    state.revoke = Revoke::Draining(Draining {
                        partitions,
                        chunks,
                        reply,
                        deadline: Instant::now() + config.pipeline.rebalance_timeout,
                    });
                }
                None => return Step::Failed(anyhow::anyhow!("the Kafka poll thread stopped")),
            },
            Some(reply) = self.journal_done.recv() => state.journaled(reply, config, stats),
            Some(done) = self.done_rx.recv() => {
                state.finish(done, stats);
                // Commit as soon as rows are durable (at most once per
                // commit_interval): what a crash makes the next owner insert
                // again is what was durable and not yet committed.
                state.commit_at_most_every(config.kafka.commit_interval, &mut self.last_commit, &self.poller.commands);
            }
            _ = self.tick.tick() => {
                state.flush_aged(config.batch.max_age);
                state.commit_at_most_every(config.kafka.commit_interval, &mut self.last_commit, &self.poller.commands);
                if self.last_summary.elapsed() >= config.quality.interval {
                    state.summarize(stats, paused);
                    self.last_summary = Instant::now();
                }
                stats.in_flight_bytes.set(state.in_flight_bytes as i64);
            }
        }
        Step::Continue
    }

    /// Shutdown: stop fetching, flush every batch, wait for the workers,
    /// commit, leave the group, join the threads.
    async fn drain(self) {
        let Pipeline {
            config,
            stats,
            mut state,
            mut events,
            decoder_threads,
            poller,
            shard_txs,
            letters_tx,
            journal_tx,
            mut done_rx,
            mut journal_done,
            workers,
            ..
        } = self;
        info!("shutting down: flushing batches");
        poller.pause.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + config.pipeline.shutdown_timeout;
        state.summarize(&stats, true);
        state.flush_all();
        while state.watermarks.in_flight() > state.rebuilding_records() || state.has_queued() {
            state.dispatch(&shard_txs, &letters_tx, &journal_tx);
            tokio::select! {
                Some(done) = done_rx.recv() => state.finish(done, &stats),
                Some(reply) = journal_done.recv() => state.journaled(reply, &config, &stats),
                // Records still arriving are not taken: they stay uncommitted.
                Some(Event::Revoke { partitions, chunks, reply }) = events.recv() => {
                    state.revoke = Revoke::Draining(Draining { partitions, chunks, reply, deadline: Instant::now() });
                    state.answer_revoke(Answer::Now);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(records = state.watermarks.in_flight(),
                          "shutdown deadline reached; uncommitted records will be read again");
                    break;
                }
            }
        }
        drop(shard_txs);
        drop(letters_tx);
        drop(journal_tx);
        let offsets = state.watermarks.to_commit();
        // Closing commits synchronously and leaves the group; events that are
        // still coming are dropped (uncommitted) so nobody blocks on them.
        if poller.commands.send(Command::Close(offsets)).is_err() {
            warn!("the Kafka poll thread was gone before the final commit");
        }
        let drain = async { while events.recv().await.is_some() {} };
        if tokio::time::timeout_at(deadline + KAFKA_CLOSE_GRACE, drain)
            .await
            .is_err()
        {
            warn!("the Kafka side did not close in time");
        } else {
            // Every sender is gone, so the threads are finishing.
            for t in decoder_threads.into_iter().chain([poller.thread]) {
                if !matches!(
                    tokio::task::spawn_blocking(move || t.join()).await,
                    Ok(Ok(()))
                ) {
                    warn!("a Kafka or decoder thread panicked");
                }
            }
        }
        if tokio::time::timeout_at(deadline, workers.wait())
            .await
            .is_err()
        {
            warn!("insert workers still busy at the deadline");
        }
        info!("stopped");
    }
}

/// What the event loop owns and changes, one event at a time.
struct State {
    /// The counters at the end of the last accounting period.
    last_counters: Counters,
    /// The consumer group (part of every deduplication token).
    group: String,
    /// Ranges of each assigned partition, by topic then partition (not by
    /// [`PartitionId`]: every record looks its partition up by the `&str`
    /// it carries, without building a key).
    partitions: HashMap<String, HashMap<i32, Partition>>,
    /// Assignments so far: each partition's current one tags its ranges.
    epoch: u64,
    /// The partitions owned and their assignment, shared with the journal
    /// worker so that it never journals a range of a partition gone.
    owned: Owned,
    /// Closed ranges waiting to be journaled.
    to_journal: Vec<Closed>,
    /// Partitions whose journal is to be read.
    to_read: Vec<ToRead>,
    /// A journal job is out.
    journal_busy: bool,
    /// Journaled ranges' batches waiting for their shard's queue, by shard.
    ready: Vec<VecDeque<Batch>>,
    /// Letters waiting for the dead-letter worker's queue.
    letters: VecDeque<Letter>,
    /// Per partition: offsets consumed, offsets durable, what to commit.
    watermarks: Watermarks,
    /// Bytes of records taken and not yet durable (the budget's measure).
    in_flight_bytes: usize,
    /// Decoded chunks, back in poll order.
    in_order: InOrder<Vec<Decoded>>,
    /// Consuming, or draining a revocation.
    revoke: Revoke,
    /// The data accounting (ingest_quality).
    quality: Quality,
    /// How many shards (summary rows go to their host's).
    shards: usize,
}

impl State {
    fn new(config: &Config, owned: Owned, now_ms: u64) -> State {
        let shards = config.clickhouse.shards.len();
        State {
            last_counters: Counters::default(),
            group: config.kafka.group_id.clone(),
            partitions: HashMap::new(),
            epoch: 0,
            owned,
            to_journal: Vec::new(),
            to_read: Vec::new(),
            journal_busy: false,
            ready: (0..shards).map(|_| VecDeque::new()).collect(),
            letters: VecDeque::new(),
            watermarks: Watermarks::default(),
            in_flight_bytes: 0,
            in_order: InOrder::new(),
            revoke: Revoke::Consuming,
            quality: Quality::new(config.quality.ingester_id(), now_ms),
            shards,
        }
    }

    /// The state of a partition (`accept` announces one it has not heard of
    /// before asking for it).
    fn partition(&mut self, topic: &str, partition: i32) -> &mut Partition {
        self.partitions
            .entry(topic.to_owned())
            .or_default()
            .entry(partition)
            .or_default()
    }

    /// Partitions were assigned: their journal is read before their records
    /// are taken.
    fn assigned(&mut self, partitions: Vec<(PartitionId, Option<i64>)>) {
        let ids: Vec<PartitionId> = partitions.iter().map(|(id, _)| id.clone()).collect();
        self.quality.partitions_assigned(&ids);
        let mut owned = lock(&self.owned);
        for (id, start) in partitions {
            self.epoch += 1;
            owned.insert(id.clone(), self.epoch);
            self.to_read.push(ToRead {
                id: id.clone(),
                epoch: self.epoch,
                from: start.unwrap_or(0),
            });
            let epoch = self.epoch;
            self.partitions.entry(id.topic).or_default().insert(
                id.partition,
                Partition {
                    epoch,
                    held: Some(Vec::new()),
                    ..Partition::default()
                },
            );
        }
    }

    /// A journal job finished.
    fn journaled(&mut self, reply: JournalDone, config: &Config, stats: &Stats) {
        self.journal_busy = false;
        match reply {
            JournalDone::Written(closed) => {
                for c in closed {
                    let owned = self
                        .partitions
                        .get(&c.id.topic)
                        .and_then(|p| p.get(&c.id.partition))
                        .is_some_and(|p| p.epoch == c.epoch);
                    if owned {
                        self.release(c);
                    } else {
                        // Revoked meanwhile: never inserted, never committed
                        // by this member; the next owner reads the records.
                        self.in_flight_bytes -= c.cost();
                    }
                }
            }
            JournalDone::Read(read) => {
                for ToRebuild {
                    id,
                    epoch,
                    ranges: rebuild,
                } in read
                {
                    let Some(p) = self
                        .partitions
                        .get_mut(&id.topic)
                        .and_then(|p| p.get_mut(&id.partition))
                        .filter(|p| p.epoch == epoch)
                    else {
                        continue;
                    };
                    if !rebuild.is_empty() {
                        info!(partition = %id, ranges = rebuild.len(),
                              first = rebuild.first().map(|r| r.0), last = rebuild.last().map(|r| r.1),
                              "rebuilding the ranges a previous owner journaled");
                    }
                    p.rebuild = rebuild.into();
                    let held = p.held.take().unwrap_or_default();
                    for d in held {
                        self.in_flight_bytes -= d.raw.payload.len();
                        self.accept(d, config, stats);
                    }
                }
            }
        }
    }

    /// Whether any partition is rebuilding journaled ranges.
    fn rebuilding(&self) -> bool {
        self.partitions
            .values()
            .flat_map(HashMap::values)
            .any(|p| !p.rebuild.is_empty() || p.open.as_ref().is_some_and(|o| o.rebuild.is_some()))
    }

    /// Records in open rebuilt ranges: they wait for the rest of their range
    /// and are never closed early (shutdown and revocation leave them).
    fn rebuilding_records(&self) -> usize {
        self.partitions
            .values()
            .flat_map(HashMap::values)
            .filter_map(|p| p.open.as_ref())
            .filter(|o| o.rebuild.is_some())
            .map(|o| o.offsets.len())
            .sum()
    }

    /// Adds a decoded record to its partition's open range: its rows to the
    /// batch of their (shard, table), or a letter for the dead-letter topic.
    fn accept(&mut self, d: Decoded, config: &Config, stats: &Stats) {
        let (topic, partition, offset) = (d.raw.topic.clone(), d.raw.partition, d.raw.offset);
        let known = self
            .partitions
            .get(&topic)
            .is_some_and(|parts| parts.contains_key(&partition));
        if !known {
            // Records of a partition never announced: read its journal
            // first all the same, from this record on.
            warn!(%topic, partition, offset, "records of a partition not announced as assigned");
            self.assigned(vec![(PartitionId::new(&topic, partition), Some(offset))]);
        }
        let p = self.partition(&topic, partition);
        if let Some(held) = &mut p.held {
            let cost = d.raw.payload.len();
            held.push(d);
            self.in_flight_bytes += cost;
            return;
        }
        let Decoded { raw, outcome } = d;
        stats.records_in.inc();
        stats.bytes_in.inc_by(raw.payload.len() as u64);
        self.watermarks.consumed(&topic, partition, offset);
        let p = self.partition(&topic, partition);
        let epoch = p.epoch;
        let cut = ranges::cut(&mut p.rebuild, p.open.as_ref().map(|o| o.rebuild), offset);
        let mut closed = Vec::new();
        if cut.close_before {
            closed.extend(close(p, &topic, partition));
        }
        let open = p.open.get_or_insert_with(|| Open::new(offset, cut.rebuild));
        if open.offsets.is_empty() && open.rebuild.is_some() {
            stats.ranges_rebuilt.inc();
        }
        let cost = open.add(raw, outcome, epoch, &p.last_sizes, stats);
        let full = open.rebuild.is_none()
            && (open.rows >= config.batch.max_rows || open.bytes >= config.batch.max_bytes);
        if cut.close_after || full {
            closed.extend(close(p, &topic, partition));
        }
        self.in_flight_bytes += cost;
        for c in closed {
            self.closed(c);
        }
    }

    /// A range was closed: a new one is journaled first, a rebuilt one is
    /// in the journal already.
    fn closed(&mut self, c: Closed) {
        if c.rebuilt {
            self.release(c);
        } else {
            self.to_journal.push(c);
        }
    }

    /// Hands a journaled range's INSERTs and letters to the workers.
    fn release(&mut self, c: Closed) {
        let token = journal::token(&self.group, &c.id.topic, c.id.partition, c.first, c.last);
        for mut b in c.batches {
            b.token = Some(token.clone());
            self.ready[b.shard].push_back(b);
        }
        self.letters.extend(c.letters);
    }

    /// Closes the free ranges (not the rebuilt ones) older than `max_age`,
    /// or all of them.
    fn flush(&mut self, max_age: Option<Duration>) {
        let mut closed = Vec::new();
        for (topic, parts) in &mut self.partitions {
            for (partition, p) in parts {
                let due = p.open.as_ref().is_some_and(|o| {
                    o.rebuild.is_none() && max_age.is_none_or(|age| o.created.elapsed() >= age)
                });
                if due {
                    closed.extend(close(p, topic, *partition));
                }
            }
        }
        for c in closed {
            self.closed(c);
        }
    }

    fn flush_aged(&mut self, max_age: Duration) {
        self.flush(Some(max_age));
    }

    fn flush_all(&mut self) {
        self.flush(None);
    }

    fn has_queued(&self) -> bool {
        !self.letters.is_empty()
            || self.ready.iter().any(|q| !q.is_empty())
            || !self.to_journal.is_empty()
            || self.journal_busy
    }

    /// Hands ready batches and letters to their workers, and the next job
    /// to the journal task, without blocking.
    fn dispatch(
        &mut self,
        shard_txs: &[mpsc::Sender<Batch>],
        letters: &mpsc::Sender<Letter>,
        journal: &mpsc::Sender<JournalJob>,
    ) {
        if !self.journal_busy {
            let job = if !self.to_read.is_empty() {
                Some(JournalJob::Read(std::mem::take(&mut self.to_read)))
            } else if !self.to_journal.is_empty() {
                Some(JournalJob::Write(std::mem::take(&mut self.to_journal)))
            } else {
                None
            };
            if let Some(job) = job {
                match journal.try_send(job) {
                    Ok(()) => self.journal_busy = true,
                    Err(
                        mpsc::error::TrySendError::Full(job)
                        | mpsc::error::TrySendError::Closed(job),
                    ) => match job {
                        JournalJob::Read(r) => self.to_read = r,
                        JournalJob::Write(w) => self.to_journal = w,
                    },
                }
            }
        }
        for (shard, queue) in self.ready.iter_mut().enumerate() {
            while let Some(batch) = queue.pop_front() {
                if let Err(
                    mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b),
                ) = shard_txs[shard].try_send(batch)
                {
                    queue.push_front(b);
                    break;
                }
            }
        }
        while let Some(letter) = self.letters.pop_front() {
            if let Err(mpsc::error::TrySendError::Full(l) | mpsc::error::TrySendError::Closed(l)) =
                letters.try_send(letter)
            {
                self.letters.push_front(l);
                break;
            }
        }
    }

    /// Hands the watermarks that moved to the poll thread for commit, unless
    /// a commit went out less than `every` ago.
    fn commit_at_most_every(
        &mut self,
        every: Duration,
        last: &mut Instant,
        commands: &std::sync::mpsc::SyncSender<Command>,
    ) {
        if last.elapsed() < every {
            return;
        }
        let offsets = self.watermarks.to_commit();
        if offsets.is_empty() {
            return;
        }
        if commands.try_send(Command::Commit(offsets)).is_err() {
            // The poll thread is behind; the next commit carries the same
            // or a later watermark.
            self.watermarks.forget_committed();
        }
        *last = Instant::now();
    }

    fn finish(&mut self, done: Done, stats: &Stats) {
        let sources = match done {
            Done::Inserted {
                shard,
                table,
                rows,
                sources,
            } => {
                if rows > 0 {
                    stats.rows_inserted(shard, table, rows as u64);
                }
                sources
            }
            Done::DeadLettered { sources } => sources,
        };
        let now = now_ms();
        for s in sources {
            self.in_flight_bytes -= s.cost;
            // A range's records finish together, so the watermark only ever
            // stops at the start of a range.
            let Some(p) = self
                .partitions
                .get_mut(&s.raw.topic)
                .and_then(|p| p.get_mut(&s.raw.partition))
            else {
                continue;
            };
            // A range of an earlier assignment of the partition (revoked
            // undrained, then assigned here again) is not this one's: its
            // offsets were not committed, so the partition's owner now reads
            // its records again, and accounts for them.
            if p.epoch != s.range.epoch {
                continue;
            }
            if let Some(meta) = &s.meta {
                let seen = self
                    .quality
                    .observe(meta, &s.raw.topic, s.raw.partition, now);
                stats.observed(&seen, now.saturating_sub(meta.time_ms));
            }
            let Some(range) = p.in_flight.get_mut(&s.range.first) else {
                continue;
            };
            range.remaining = range.remaining.saturating_sub(1);
            if range.remaining == 0
                && let Some(range) = p.in_flight.remove(&s.range.first)
            {
                for o in range.offsets {
                    self.watermarks.finished(&s.raw.topic, s.raw.partition, o);
                }
            }
        }
    }

    /// Replies to a pending revocation once its partitions have nothing in
    /// flight (or at its deadline, or `now`) with their watermarks, which
    /// never pass an undelivered record.
    fn answer_revoke(&mut self, when: Answer) {
        let Revoke::Draining(r) = &self.revoke else {
            return;
        };
        // An open rebuilt range waits for records that will not come now:
        // it stays in the journal for the next owner.
        let rebuilding = |t: &str, p: i32| {
            self.partitions
                .get(t)
                .and_then(|parts| parts.get(&p))
                .and_then(|p| p.open.as_ref())
                .filter(|o| o.rebuild.is_some())
                .map_or(0, |o| o.offsets.len())
        };
        let drained = self.in_order.handed_on() >= r.chunks
            && !self.journal_busy
            && r.partitions.iter().all(|id| {
                self.watermarks.in_flight_of(&id.topic, id.partition)
                    == rebuilding(&id.topic, id.partition)
            });
        if !(drained || when == Answer::Now || Instant::now() >= r.deadline) {
            // Records of those partitions may sit in a young batch.
            self.flush_all();
            return;
        }
        let Revoke::Draining(r) = std::mem::replace(&mut self.revoke, Revoke::Consuming) else {
            return;
        };
        if !drained {
            warn!(
                partitions = r.partitions.len(),
                "revoked partitions not drained in time; their undelivered records will be read again"
            );
        }
        let offsets: Vec<Commit> = r
            .partitions
            .iter()
            .filter_map(|id| self.watermarks.revoke(&id.topic, id.partition))
            .collect();
        // Forget the partitions: ranges not yet journaled are dropped (never
        // inserted, so the next owner may cut those records as it likes),
        // and the journal task stops writing theirs.
        let revoked: HashSet<PartitionId> = r.partitions.into_iter().collect();
        {
            let mut owned = lock(&self.owned);
            for key in &revoked {
                owned.remove(key);
            }
        }
        for PartitionId { topic, partition } in &revoked {
            if let Some(parts) = self.partitions.get_mut(topic) {
                if let Some(gone) = parts.remove(partition) {
                    let held = gone.held.unwrap_or_default();
                    self.in_flight_bytes -= held.iter().map(|d| d.raw.payload.len()).sum::<usize>();
                    self.in_flight_bytes -= gone.open.map_or(0, |o| o.cost());
                }
                if parts.is_empty() {
                    self.partitions.remove(topic);
                }
            }
        }
        let (keep, dropped): (Vec<Closed>, Vec<Closed>) = std::mem::take(&mut self.to_journal)
            .into_iter()
            .partition(|c| !revoked.contains(&c.id));
        self.to_journal = keep;
        for c in dropped {
            self.in_flight_bytes -= c.cost();
        }
        self.to_read.retain(|r| !revoked.contains(&r.id));
        // The poll thread may have given up waiting; nothing else to do.
        let _sent = r.reply.try_send(offsets);
    }

    /// Ends the accounting period and queues its summary rows, each on the
    /// shard of its host, and this ingester's own row on the first shard.
    fn summarize(&mut self, stats: &Stats, paused: bool) {
        let now = now_ms();
        let status = quality::status_row(
            self.quality.ingester(),
            now,
            stats,
            &mut self.last_counters,
            self.in_flight_bytes,
            paused,
        );
        self.ready[0].push_back(Batch::of(0, Rows::IngesterStatus(vec![status])));
        for batch in quality::per_shard(self.quality.summarize(now), self.shards) {
            self.ready[batch.shard].push_back(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoking(
        state: &mut State,
        chunks: u64,
        deadline: Instant,
    ) -> std::sync::mpsc::Receiver<Vec<Commit>> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        state.revoke = Revoke::Draining(Draining {
            partitions: vec![PartitionId::new("t", 0)],
            chunks,
            reply,
            deadline,
        });
        answer
    }

    #[test]
    fn a_revoke_is_answered_once_its_chunks_are_in_and_its_records_durable() {
        let mut state = State::new(&Config::default(), Owned::default(), 0);
        state.assigned(vec![(PartitionId::new("t", 0), Some(0))]);
        state.watermarks.consumed("t", 0, 10);
        let answer = revoking(&mut state, 2, Instant::now() + Duration::from_secs(60));

        // Chunk 1 of 2 polled before the revoke has not been decoded yet.
        state.in_order.push(0, Vec::new());
        state.answer_revoke(Answer::WhenDrained);
        assert!(answer.try_recv().is_err(), "answered with a chunk missing");
        state.in_order.push(1, Vec::new());
        // Its record 10 is still in flight.
        state.answer_revoke(Answer::WhenDrained);
        assert!(
            answer.try_recv().is_err(),
            "answered with a record in flight"
        );

        state.watermarks.finished("t", 0, 10);
        state.answer_revoke(Answer::WhenDrained);
        let offsets = answer.try_recv().expect("answered once drained");
        assert_eq!(offsets.len(), 1);
        assert_eq!(offsets[0].offset, 11, "committed past the durable record");
        assert!(matches!(state.revoke, Revoke::Consuming));
        assert!(state.partitions.is_empty(), "the partition is forgotten");
        assert!(
            lock(&state.owned).is_empty(),
            "the journal stops writing it"
        );
    }

    #[test]
    fn a_revoke_not_drained_is_answered_at_its_deadline_or_on_shutdown() {
        for shutting_down in [false, true] {
            let mut state = State::new(&Config::default(), Owned::default(), 0);
            state.assigned(vec![(PartitionId::new("t", 0), Some(0))]);
            state.watermarks.consumed("t", 0, 10);
            let deadline = if shutting_down {
                Instant::now() + Duration::from_secs(60)
            } else {
                Instant::now()
            };
            let answer = revoking(&mut state, 1, deadline);
            state.answer_revoke(if shutting_down {
                Answer::Now
            } else {
                Answer::WhenDrained
            });
            let offsets = answer.try_recv().expect("answered");
            assert_eq!(
                offsets[0].offset, 10,
                "the record in flight stays uncommitted for the next owner"
            );
        }
    }
}
