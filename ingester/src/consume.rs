//! The pipeline: consume → decode → batch per (shard, table) → insert
//! workers → watermark → commit.
//!
//! One task owns the consumer, the batches and the watermarks; per shard, a
//! fixed pool of insert workers takes flushed batches from a bounded queue and
//! reports back. Nothing is spawned per message, and every queue is bounded:
//!
//! - Bytes of consumed records not yet durable are counted against
//!   `pipeline.memory_budget_bytes`. Over it, the pipeline stops taking
//!   records from the consumer; librdkafka's prefetch queue (capped at a
//!   quarter of the budget) then fills and fetching stops. Under half of the
//!   budget it takes records again.
//! - A shard that is down keeps its batches (retrying) while the other
//!   shards keep flowing, until the budget stops consumption.
//!
//! Offsets are committed only up to the contiguous watermark of records that
//! are durable (inserted, or dead-lettered): see `offsets.rs`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use spillway_shared::{Limits, Record, decode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::dlq::{DeadLetter, DeadLetters};
use crate::offsets::Watermarks;
use crate::rows::{Table, sample_row_size, sample_rows, status_row};
use crate::shard::shard_for;
use crate::sink::{Rows, Sink, SinkError};
use crate::telemetry::Stats;

/// One source record inside a batch.
#[derive(Debug, Clone)]
struct Source {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Rows of this record in the batch: `rows[start..end]`.
    start: usize,
    end: usize,
}

/// Rows waiting to be inserted into one (shard, table), with their sources.
#[derive(Debug)]
struct Batch {
    shard: usize,
    rows: Rows,
    sources: Vec<Source>,
    bytes: usize,
    created: Instant,
}

impl Batch {
    fn new(shard: usize, table: Table) -> Batch {
        Batch {
            shard,
            rows: match table {
                Table::Samples => Rows::Samples(Vec::new()),
                Table::AgentStatus => Rows::Status(Vec::new()),
            },
            sources: Vec::new(),
            bytes: 0,
            created: Instant::now(),
        }
    }

    fn payload_bytes(&self) -> usize {
        self.sources.iter().map(|s| s.payload.len()).sum()
    }
}

/// What an insert worker reports.
struct Done {
    sources: Vec<Source>,
    rows: usize,
    shard: usize,
    table: Table,
}

/// Rebalance events, handed from librdkafka's callback to the pipeline.
struct Ctx {
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    stats: Arc<Stats>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = lock(&self.revoked);
            for e in tpl.elements() {
                revoked.push((e.topic().to_owned(), e.partition()));
            }
            info!(partitions = tpl.count(), "partitions revoked");
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

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(tpl) = rebalance {
            info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Runs the pipeline until `shutdown`, then flushes, commits and leaves the
/// group within `pipeline.shutdown_timeout`.
pub async fn run<S: Sink + Clone>(
    config: Config,
    sink: S,
    dlq: DeadLetters,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let consumer: StreamConsumer<Ctx> = consumer_config(&config).create_with_context(Ctx {
        revoked: revoked.clone(),
        stats: stats.clone(),
    })?;
    let topics: Vec<&str> = config.kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(topics = ?topics, group = %config.kafka.group_id, shards = config.clickhouse.shards.len(),
          "consuming");

    let shards = config.clickhouse.shards.len();
    let concurrency = config.pipeline.insert_concurrency;
    // Every batch in flight can report back without blocking.
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(shards * concurrency * 4 + 16);
    let mut shard_txs = Vec::with_capacity(shards);
    let workers = tokio_util::task::TaskTracker::new();
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel::<Batch>(concurrency);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..concurrency {
            workers.spawn(insert_worker(
                rx.clone(),
                sink.clone(),
                dlq.clone(),
                done_tx.clone(),
                stats.clone(),
                shutdown.clone(),
            ));
        }
        shard_txs.push(tx);
    }
    drop(done_tx);
    workers.close();

    let mut state = State {
        batches: HashMap::new(),
        ready: (0..shards).map(|_| VecDeque::new()).collect(),
        watermarks: Watermarks::default(),
        in_flight_bytes: 0,
        paused: false,
        topics: HashMap::new(),
    };
    let limits = Limits::default();
    let budget = config.pipeline.memory_budget_bytes;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_commit = Instant::now();

    loop {
        // Hand ready batches to their shard's workers without blocking.
        state.dispatch(&shard_txs);
        for (topic, partition) in lock(&revoked).drain(..) {
            state.watermarks.revoke(&topic, partition);
        }
        // Hysteresis: pause at the budget, resume at half of it.
        if !state.paused && state.in_flight_bytes >= budget {
            info!(
                in_flight_bytes = state.in_flight_bytes,
                "memory budget full: consumption paused"
            );
            stats.consumption_paused.set(1);
            state.paused = true;
        } else if state.paused && state.in_flight_bytes < budget / 2 {
            info!(
                in_flight_bytes = state.in_flight_bytes,
                "consumption resumed"
            );
            stats.consumption_paused.set(0);
            state.paused = false;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Over budget, the consumer is not polled: librdkafka's prefetch
            // queue fills to its cap and fetching stops. (librdkafka's
            // pause/resume lost or stalled records in our backlog test; see
            // ARCHITECTURE.md, known limits.)
            msg = consumer.recv(), if !state.paused => {
                match msg {
                    Err(e) => {
                        warn!(error = %e, "consumer error");
                        stats.consumer_errors.inc();
                    }
                    Ok(m) => {
                        let topic = state.topic_name(m.topic());
                        let source = Source {
                            topic,
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                            start: 0,
                            end: 0,
                        };
                        stats.records_in.inc();
                        stats.bytes_in.inc_by(source.payload.len() as u64);
                        state.watermarks.consumed(&source.topic, source.partition, source.offset);
                        state.in_flight_bytes += source.payload.len();
                        state.accept(source, &limits, &config, &dlq, &stats).await;
                    }
                }
            }
            Some(done) = done_rx.recv() => state.finish(done, &stats),
            _ = tick.tick() => {
                state.flush_aged(config.batch.max_age);
                if last_commit.elapsed() >= config.kafka.commit_interval {
                    commit(&consumer, &mut state.watermarks, CommitMode::Async, &stats);
                    last_commit = Instant::now();
                }
                stats.in_flight_bytes.set(state.in_flight_bytes as i64);
            }
        }
    }

    // Shutdown: stop fetching, flush every batch, wait for the workers, commit.
    info!("shutting down: flushing batches");
    let deadline = tokio::time::Instant::now() + config.pipeline.shutdown_timeout;
    state.flush_all();
    while state.watermarks.in_flight() > 0 || state.ready.iter().any(|q| !q.is_empty()) {
        state.dispatch(&shard_txs);
        tokio::select! {
            Some(done) = done_rx.recv() => state.finish(done, &stats),
            _ = tokio::time::sleep_until(deadline) => {
                warn!(records = state.watermarks.in_flight(),
                      "shutdown deadline reached; uncommitted records will be read again");
                break;
            }
        }
    }
    drop(shard_txs);
    commit(&consumer, &mut state.watermarks, CommitMode::Sync, &stats);
    consumer.unsubscribe();
    if tokio::time::timeout_at(deadline, workers.wait())
        .await
        .is_err()
    {
        warn!("insert workers still busy at the deadline");
    }
    info!("stopped");
    Ok(())
}

struct State {
    batches: HashMap<(usize, Table), Batch>,
    ready: Vec<VecDeque<Batch>>,
    watermarks: Watermarks,
    in_flight_bytes: usize,
    paused: bool,
    topics: HashMap<String, Arc<str>>,
}

impl State {
    fn topic_name(&mut self, topic: &str) -> Arc<str> {
        self.topics
            .entry(topic.to_owned())
            .or_insert_with(|| Arc::from(topic))
            .clone()
    }

    /// Decodes one record and adds its rows to the batch of its shard, or
    /// dead-letters it.
    async fn accept(
        &mut self,
        mut source: Source,
        limits: &Limits,
        config: &Config,
        dlq: &DeadLetters,
        stats: &Stats,
    ) {
        let record = match decode(&source.payload, limits) {
            Ok(r) => r,
            Err(e) => {
                stats.decode_errors.inc();
                dead_letter(dlq, &source, e.kind(), &e.to_string(), stats).await;
                self.watermarks
                    .finished(&source.topic, source.partition, source.offset);
                self.in_flight_bytes -= source.payload.len();
                return;
            }
        };
        let shard = shard_for(record.host_id(), config.clickhouse.shards.len());
        let table = match &record {
            Record::Metrics(_) => Table::Samples,
            Record::Status(_) => Table::AgentStatus,
        };
        let batch = self
            .batches
            .entry((shard, table))
            .or_insert_with(|| Batch::new(shard, table));
        source.start = batch.rows.len();
        match (&record, &mut batch.rows) {
            (Record::Metrics(m), Rows::Samples(rows)) => {
                let before = rows.len();
                sample_rows(m, rows);
                batch.bytes += rows[before..].iter().map(sample_row_size).sum::<usize>();
            }
            (Record::Status(s), Rows::Status(rows)) => {
                rows.push(status_row(s));
                batch.bytes += 256;
            }
            _ => unreachable!("batches are keyed by table"),
        }
        source.end = batch.rows.len();
        stats.rows_in.inc_by((source.end - source.start) as u64);
        batch.sources.push(source);
        if (batch.rows.len() >= config.batch.max_rows || batch.bytes >= config.batch.max_bytes)
            && let Some(b) = self.batches.remove(&(shard, table))
        {
            self.ready[shard].push_back(b);
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

    fn dispatch(&mut self, shard_txs: &[mpsc::Sender<Batch>]) {
        for (shard, queue) in self.ready.iter_mut().enumerate() {
            while let Some(batch) = queue.pop_front() {
                match shard_txs[shard].try_send(batch) {
                    Ok(()) => {}
                    Err(
                        mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b),
                    ) => {
                        queue.push_front(b);
                        break;
                    }
                }
            }
        }
    }

    fn finish(&mut self, done: Done, stats: &Stats) {
        stats.rows_inserted(done.shard, done.table, done.rows as u64);
        for s in done.sources {
            self.watermarks.finished(&s.topic, s.partition, s.offset);
            self.in_flight_bytes -= s.payload.len();
        }
    }
}

fn commit(
    consumer: &StreamConsumer<Ctx>,
    watermarks: &mut Watermarks,
    mode: CommitMode,
    stats: &Stats,
) {
    let offsets = watermarks.to_commit();
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in &offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            warn!(error = %e, "cannot build commit list");
            return;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            debug!(partitions = offsets.len(), "committed");
            stats.commits.inc();
        }
        Err(e) => {
            // The next commit carries the same or a later watermark.
            warn!(error = %e, "commit failed");
            stats.commit_errors.inc();
        }
    }
}

async fn dead_letter(dlq: &DeadLetters, s: &Source, kind: &str, error: &str, stats: &Stats) {
    warn!(topic = %s.topic, partition = s.partition, offset = s.offset, kind, error, "record dead-lettered");
    let letter = DeadLetter {
        topic: &s.topic,
        partition: s.partition,
        offset: s.offset,
        key: s.key.as_deref(),
        payload: &s.payload,
        kind,
        error,
    };
    // The offset is committed only once the letter is safe: retry until it is.
    let mut backoff = Duration::from_millis(200);
    loop {
        match dlq.send(&letter).await {
            Ok(()) => break,
            Err(e) => {
                error!(error = %e, "cannot write to the dead-letter topic; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    stats.dead_letters(kind);
}

/// Takes batches of one shard and inserts them: retryable errors are retried
/// with exponential backoff and jitter; a batch rejected for its data is split
/// by source record until the bad records are isolated and dead-lettered.
async fn insert_worker<S: Sink>(
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>,
    sink: S,
    dlq: DeadLetters,
    done: mpsc::Sender<Done>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(b) => b,
                None => return,
            }
        };
        let table = batch.rows.table();
        let rows = batch.rows.len();
        let shard = batch.shard;
        let payload = batch.payload_bytes();
        let started = Instant::now();
        let sources = insert_isolating(&sink, &dlq, batch, &stats, &shutdown).await;
        stats.batch_inserted(shard, table, rows, payload, started.elapsed());
        if done
            .send(Done {
                sources,
                rows,
                shard,
                table,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Inserts a batch; on a data error splits it in halves by source record.
/// Returns every source (inserted or dead-lettered), all now durable.
async fn insert_isolating<S: Sink>(
    sink: &S,
    dlq: &DeadLetters,
    batch: Batch,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Vec<Source> {
    let mut stack = vec![batch];
    let mut finished = Vec::new();
    while let Some(b) = stack.pop() {
        match insert_with_retry(sink, &b, stats, shutdown).await {
            Ok(()) => finished.extend(b.sources),
            Err(SinkError::Data { code, message }) if b.sources.len() == 1 => {
                let s = &b.sources[0];
                dead_letter(
                    dlq,
                    s,
                    "insert_rejected",
                    &format!("ClickHouse code {code}: {message}"),
                    stats,
                )
                .await;
                finished.extend(b.sources);
            }
            Err(SinkError::Data { .. }) => {
                let (left, right) = split(b);
                stack.push(right);
                stack.push(left);
            }
            Err(SinkError::Retryable(_)) => {
                // Only when shutting down: the records stay uncommitted and
                // are read again by whoever owns the partition next.
                return finished;
            }
        }
    }
    finished
}

async fn insert_with_retry<S: Sink>(
    sink: &S,
    b: &Batch,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Result<(), SinkError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sink.insert(b.shard, &b.rows).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                stats.insert_retries.inc();
                warn!(shard = b.shard, table = b.rows.table().name(), rows = b.rows.len(), error = %e,
                      retry_in = ?backoff, "insert failed; retrying");
                let jitter =
                    Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                warn!(shard = b.shard, table = b.rows.table().name(), rows = b.rows.len(), error = %e,
                      "batch rejected for its data; isolating the bad records");
                return Err(e);
            }
        }
    }
}

/// Splits a batch into two halves at a source-record boundary.
fn split(b: Batch) -> (Batch, Batch) {
    let mid = b.sources.len() / 2;
    let cut = b.sources[mid].start;
    let mut right_sources: Vec<Source> = b.sources[mid..].to_vec();
    let left_sources: Vec<Source> = b.sources[..mid].to_vec();
    for s in &mut right_sources {
        s.start -= cut;
        s.end -= cut;
    }
    let (left_rows, right_rows) = match b.rows {
        Rows::Samples(mut r) => {
            let right = r.split_off(cut);
            (Rows::Samples(r), Rows::Samples(right))
        }
        Rows::Status(mut r) => {
            let right = r.split_off(cut);
            (Rows::Status(r), Rows::Status(right))
        }
    };
    let half = |rows, sources| Batch {
        shard: b.shard,
        rows,
        sources,
        bytes: 0,
        created: b.created,
    };
    (
        half(left_rows, left_sources),
        half(right_rows, right_sources),
    )
}
