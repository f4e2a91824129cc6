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
//! Offsets are committed only up to the contiguous watermark of records that
//! are durable (inserted, or dead-lettered): see `offsets.rs`. A revoked
//! partition is drained and committed before it goes: see `poll.rs`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use rdkafka::ClientConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::batch::{Batch, Source};
use crate::config::Config;
use crate::decode::{self, Decoded};
use crate::dlq::DeadLetters;
use crate::insert::{Done, Worker, dead_letter};
use crate::offsets::Watermarks;
use crate::poll::{self, Command, CommitOffset, Event};
use crate::quality::{IngesterStatusRow, Quality};
use crate::rows::Table;
use crate::shard::shard_for;
use crate::sink::{Rows, Sink};
use crate::telemetry::Stats;

/// Builds the consumer configuration.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
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

/// A record that goes to the dead-letter topic instead of a table.
struct Letter {
    source: Source,
    kind: &'static str,
    message: String,
}

/// A revocation waiting for its partitions' records to become durable.
struct PendingRevoke {
    partitions: Vec<(String, i32)>,
    chunks: u64,
    reply: std::sync::mpsc::SyncSender<Vec<CommitOffset>>,
    deadline: Instant,
}

/// Runs the pipeline until `shutdown`, then flushes, commits and leaves the
/// group within `pipeline.shutdown_timeout`.
pub async fn run<S: Sink + Clone>(
    config: Config,
    sink: S,
    dlq: DeadLetters,
    stats: Arc<Stats>,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shards = config.clickhouse.shards.len();
    let decoders = config.pipeline.decode_threads;
    // Decoded chunks are several times their records' size: queue few.
    let (events_tx, mut events) = mpsc::channel::<Event>(decoders + 1);
    let precision = crate::precision::Precision::new(&config.storage.precision);
    let decode::Decoders { inputs, threads } =
        decode::start(decoders, shards, &precision, events_tx.clone())?;
    let poller = poll::start(
        consumer_config(&config),
        &config.kafka.topics,
        inputs,
        events_tx,
        config.pipeline.rebalance_timeout,
        stats.clone(),
    )?;
    info!(topics = ?config.kafka.topics, group = %config.kafka.group_id, shards, decoders,
          "consuming");

    // Every batch or letter in flight can report back without blocking.
    let concurrency = config.pipeline.insert_concurrency;
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(shards * concurrency * 4 + 16);
    let workers = tokio_util::task::TaskTracker::new();
    let mut shard_txs = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel::<Batch>(concurrency);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..concurrency {
            let worker = Worker {
                sink: sink.clone(),
                dlq: dlq.clone(),
                done: done_tx.clone(),
                stats: stats.clone(),
                shutdown: shutdown.clone(),
                tracer: tracer.clone(),
            };
            workers.spawn(worker.run(rx.clone()));
        }
        shard_txs.push(tx);
    }
    let (letters_tx, letters_rx) = mpsc::channel::<Letter>(1024);
    workers.spawn(dead_letter_worker(letters_rx, dlq, done_tx, stats.clone()));
    workers.close();

    let now = now_ms();
    let mut state = State {
        last_counters: Counters::default(),
        batches: HashMap::new(),
        ready: (0..shards).map(|_| VecDeque::new()).collect(),
        letters: VecDeque::new(),
        watermarks: Watermarks::default(),
        in_flight_bytes: 0,
        chunks_received: 0,
        unordered: BTreeMap::new(),
        revoke: None,
        quality: Quality::new(config.quality.ingester_id(), now),
        shards,
    };
    let budget = config.pipeline.memory_budget_bytes;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_commit = Instant::now();
    let mut last_summary = Instant::now();
    let mut paused = false;
    let mut failure = None;

    loop {
        state.dispatch(&shard_txs, &letters_tx);
        state.answer_revoke(false);
        // Hysteresis: pause at the budget, resume at half of it.
        if !paused && state.in_flight_bytes >= budget {
            paused = true;
        } else if paused && state.in_flight_bytes < budget / 2 {
            paused = false;
        }
        poller.pause.store(paused, Ordering::Relaxed);
        stats.consumption_paused.set(i64::from(paused));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(Event::Decoded { seq, records }) => {
                    // Offsets must enter the watermark in poll order, or a
                    // commit could pass records still being decoded.
                    state.unordered.insert(seq, records);
                    while let Some(records) = state.unordered.remove(&state.chunks_received) {
                        state.chunks_received += 1;
                        for d in records {
                            state.accept(d, &config, &stats);
                        }
                    }
                }
                Some(Event::Revoke { partitions, chunks, reply }) => {
                    state.flush_all();
                    state.revoke = Some(PendingRevoke {
                        partitions,
                        chunks,
                        reply,
                        deadline: Instant::now() + config.pipeline.rebalance_timeout,
                    });
                }
                None => {
                    failure = Some(anyhow::anyhow!("the Kafka poll thread stopped"));
                    break;
                }
            },
            Some(done) = done_rx.recv() => {
                state.finish(done, &stats);
                // Commit as soon as rows are durable (at most once per
                // commit_interval): what a crash makes the next owner insert
                // again is what was durable and not yet committed.
                state.commit_at_most_every(config.kafka.commit_interval, &mut last_commit, &poller.commands);
            }
            _ = tick.tick() => {
                state.flush_aged(config.batch.max_age);
                state.commit_at_most_every(config.kafka.commit_interval, &mut last_commit, &poller.commands);
                if last_summary.elapsed() >= config.quality.interval {
                    state.summarize(&stats, paused);
                    last_summary = Instant::now();
                }
                stats.in_flight_bytes.set(state.in_flight_bytes as i64);
            }
        }
    }

    // Shutdown: stop fetching, flush every batch, wait for the workers, commit.
    info!("shutting down: flushing batches");
    poller.pause.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + config.pipeline.shutdown_timeout;
    state.summarize(&stats, true);
    state.flush_all();
    while state.watermarks.in_flight() > 0 || state.has_queued() {
        state.dispatch(&shard_txs, &letters_tx);
        tokio::select! {
            Some(done) = done_rx.recv() => state.finish(done, &stats),
            // Records still arriving are not taken: they stay uncommitted.
            Some(Event::Revoke { partitions, chunks, reply }) = events.recv() => {
                state.revoke = Some(PendingRevoke { partitions, chunks, reply, deadline: Instant::now() });
                state.answer_revoke(true);
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
    let offsets = state.watermarks.to_commit();
    // Closing commits synchronously and leaves the group; events that are
    // still coming are dropped (uncommitted) so nobody blocks on them.
    if poller.commands.send(Command::Close(offsets)).is_err() {
        warn!("the Kafka poll thread was gone before the final commit");
    }
    let drain = async { while events.recv().await.is_some() {} };
    if tokio::time::timeout_at(deadline + Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        warn!("the Kafka side did not close in time");
    } else {
        // Every sender is gone, so the threads are finishing.
        for t in threads.into_iter().chain([poller.thread]) {
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
    failure.map_or(Ok(()), Err)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters sampled at the end of each accounting period.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    records: u64,
    rows_inserted: u64,
    dead_letters: u64,
    insert_retries: u64,
}

impl Counters {
    fn read(stats: &Stats) -> Counters {
        Counters {
            records: stats.records_in.get(),
            rows_inserted: stats.rows_inserted_total.get(),
            dead_letters: stats.dead_letters_total.get(),
            insert_retries: stats.insert_retries.get(),
        }
    }
}

struct State {
    last_counters: Counters,
    batches: HashMap<(usize, Table), Batch>,
    ready: Vec<VecDeque<Batch>>,
    letters: VecDeque<Letter>,
    watermarks: Watermarks,
    in_flight_bytes: usize,
    /// Chunks taken, in order; the next one to take is number `chunks_received`.
    chunks_received: u64,
    /// Chunks decoded ahead of their turn (at most a few per decoder).
    unordered: BTreeMap<u64, Vec<Decoded>>,
    revoke: Option<PendingRevoke>,
    quality: Quality,
    shards: usize,
}

impl State {
    /// Adds a decoded record's rows to the batch of its shard, or queues it
    /// for the dead-letter topic.
    fn accept(&mut self, d: Decoded, config: &Config, stats: &Stats) {
        let Decoded { raw, outcome } = d;
        stats.records_in.inc();
        stats.bytes_in.inc_by(raw.payload.len() as u64);
        self.watermarks
            .consumed(&raw.topic, raw.partition, raw.offset);
        let body = match outcome {
            Ok(body) => body,
            Err(rejected) => {
                stats.decode_errors.inc();
                let cost = raw.payload.len();
                self.in_flight_bytes += cost;
                self.letters.push_back(Letter {
                    source: Source {
                        raw,
                        cost,
                        meta: None,
                        start: 0,
                        end: 0,
                    },
                    kind: rejected.kind,
                    message: rejected.message,
                });
                return;
            }
        };
        let cost = raw.payload.len() + body.mem_bytes;
        self.in_flight_bytes += cost;
        stats.rows_in.inc_by(body.rows.len() as u64);
        let key = (body.shard, body.rows.table());
        let batch = self
            .batches
            .entry(key)
            .or_insert_with(|| Batch::new(key.0, key.1));
        let source = Source {
            raw,
            cost,
            meta: Some(body.meta),
            start: 0,
            end: 0,
        };
        batch.push(body.rows, body.row_bytes, source);
        if (batch.rows.len() >= config.batch.max_rows || batch.bytes >= config.batch.max_bytes)
            && let Some(b) = self.batches.remove(&key)
        {
            self.ready[key.0].push_back(b);
        }
    }

    fn flush_aged(&mut self, max_age: Duration) {
        let aged: Vec<(usize, Table)> = self
            .batches
            .iter()
            .filter(|(_, b)| b.created.elapsed() >= max_age)
            .map(|(k, _)| *k)
            .collect();
        for key in aged {
            if let Some(b) = self.batches.remove(&key) {
                self.ready[b.shard].push_back(b);
            }
        }
    }

    fn flush_all(&mut self) {
        for (_, b) in self.batches.drain() {
            self.ready[b.shard].push_back(b);
        }
    }

    fn has_queued(&self) -> bool {
        !self.letters.is_empty() || self.ready.iter().any(|q| !q.is_empty())
    }

    /// Hands ready batches and letters to their workers without blocking.
    fn dispatch(&mut self, shard_txs: &[mpsc::Sender<Batch>], letters: &mpsc::Sender<Letter>) {
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
        if done.rows > 0 {
            stats.rows_inserted(done.shard, done.table, done.rows as u64);
        }
        let now = now_ms();
        for s in done.sources {
            self.watermarks
                .finished(&s.raw.topic, s.raw.partition, s.raw.offset);
            self.in_flight_bytes -= s.cost;
            if let Some(meta) = &s.meta {
                let seen = self.quality.observe(meta, now);
                stats.observed(&seen, now.saturating_sub(meta.time_ms));
            }
        }
    }

    /// Replies to a pending revocation once its partitions have nothing in
    /// flight (or at its deadline, or `now`) with their watermarks, which
    /// never pass an undelivered record.
    fn answer_revoke(&mut self, now: bool) {
        let Some(r) = &self.revoke else {
            return;
        };
        let drained = self.chunks_received >= r.chunks
            && r.partitions
                .iter()
                .all(|(t, p)| self.watermarks.in_flight_of(t, *p) == 0);
        if !(drained || now || Instant::now() >= r.deadline) {
            // Records of those partitions may sit in a young batch.
            self.flush_all();
            return;
        }
        let Some(r) = self.revoke.take() else {
            return;
        };
        if !drained {
            warn!(
                partitions = r.partitions.len(),
                "revoked partitions not drained in time; their undelivered records will be read again"
            );
        }
        let offsets: Vec<CommitOffset> = r
            .partitions
            .iter()
            .filter_map(|(t, p)| self.watermarks.revoke(t, *p))
            .collect();
        // The poll thread may have given up waiting; nothing else to do.
        let _sent = r.reply.try_send(offsets);
    }

    /// Ends the accounting period and queues its summary rows, each on the
    /// shard of its host, and this ingester's own row on the first shard.
    fn summarize(&mut self, stats: &Stats, paused: bool) {
        let now = now_ms();
        let counters = Counters::read(stats);
        let delta = |f: fn(&Counters) -> u64| f(&counters).saturating_sub(f(&self.last_counters));
        let status = IngesterStatusRow {
            time: u32::try_from(now / 1000).unwrap_or(u32::MAX),
            ingester: self.quality.ingester().to_owned(),
            records: delta(|c| c.records),
            rows_inserted: delta(|c| c.rows_inserted),
            dead_letters: delta(|c| c.dead_letters),
            insert_retries: delta(|c| c.insert_retries),
            consumer_lag: stats.total_lag.load(Ordering::Relaxed),
            assigned_partitions: stats.assigned_partitions.get(),
            in_flight_bytes: self.in_flight_bytes as i64,
            paused: u8::from(paused),
        };
        self.last_counters = counters;
        self.ready[0].push_back(Batch::of(0, Rows::IngesterStatus(vec![status])));
        let rows = self.quality.summarize(now);
        if rows.is_empty() {
            return;
        }
        let mut per_shard: Vec<Vec<_>> = (0..self.shards).map(|_| Vec::new()).collect();
        for row in rows {
            per_shard[shard_for(&row.host_id, self.shards)].push(row);
        }
        for (shard, rows) in per_shard.into_iter().enumerate() {
            if !rows.is_empty() {
                self.ready[shard].push_back(Batch::of(shard, Rows::Quality(rows)));
            }
        }
    }
}

/// Sends letters to the dead-letter topic, many at a time, and reports them
/// durable.
async fn dead_letter_worker(
    mut letters: mpsc::Receiver<Letter>,
    dlq: DeadLetters,
    done: mpsc::Sender<Done>,
    stats: Arc<Stats>,
) {
    let mut group = Vec::new();
    while letters.recv_many(&mut group, 256).await > 0 {
        join_all(
            group
                .iter()
                .map(|l| dead_letter(&dlq, &l.source, l.kind, &l.message, &stats)),
        )
        .await;
        let report = Done {
            sources: group.drain(..).map(|l| l.source).collect(),
            rows: 0,
            shard: 0,
            table: Table::Samples,
        };
        if done.send(report).await.is_err() {
            return;
        }
    }
}
