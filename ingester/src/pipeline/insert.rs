//! Insert workers: per shard, a fixed pool takes flushed batches from a
//! bounded queue and makes them durable. Retryable errors are retried with
//! exponential backoff and jitter; a batch rejected for its data is split by
//! source record until the bad records are isolated and dead-lettered,
//! unless so many of a partition's records are rejected in a row that it is a
//! schema problem: then the worker stalls on them (`stall.rs`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::pipeline::batch::Batch;
use crate::pipeline::dlq::{DeadLetters, dead_letter};
use crate::pipeline::message::PartitionId;
use crate::pipeline::message::{Done, Source};
use crate::pipeline::stall::Stalls;
use crate::sink::{Sink, SinkError};
use crate::telemetry::Stats;
use spillway_shared::retry::{Backoff, retry_until};

/// Everything a worker needs besides its queue.
#[derive(Clone)]
pub(crate) struct Worker<S> {
    pub(crate) sink: S,
    pub(crate) dlq: DeadLetters,
    pub(crate) done: mpsc::Sender<Done>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: CancellationToken,
    /// Runs of rejected records per partition, and the stalled partitions.
    pub(crate) stalls: Arc<Stalls>,
    /// Makes one span per batch when OTLP export is on.
    pub(crate) tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

impl<S: Sink + Clone> Worker<S> {
    /// Spawns `concurrency` copies of this worker per shard on `tasks`, each
    /// shard's pool taking batches from one queue; returns the queues, by
    /// shard.
    pub(crate) fn spawn_pools(
        self,
        tasks: &TaskTracker,
        shards: usize,
        concurrency: usize,
    ) -> Vec<mpsc::Sender<Batch>> {
        (0..shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Batch>(concurrency);
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                for _ in 0..concurrency {
                    tasks.spawn(self.clone().run(rx.clone()));
                }
                tx
            })
            .collect()
    }
}

impl<S: Sink> Worker<S> {
    /// Takes batches until the queue closes.
    pub(crate) async fn run(self, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>) {
        loop {
            let batch = {
                let mut queue = queue.lock().await;
                match queue.recv().await {
                    Some(b) => b,
                    None => return,
                }
            };
            let table = batch.rows.table();
            let rows = batch.rows.len();
            let shard = batch.shard;
            let payload = batch.payload_bytes();
            let records = batch.sources.len();
            let started = Instant::now();
            let span = self.tracer.as_ref().map(|t| {
                t.span_builder("clickhouse.insert")
                    .with_kind(SpanKind::Client)
                    .with_attributes([
                        KeyValue::new("db.system.name", "clickhouse"),
                        KeyValue::new("db.operation.name", "INSERT"),
                        KeyValue::new("db.collection.name", table.name()),
                        KeyValue::new("spillway.shard", shard as i64),
                        KeyValue::new("spillway.rows", rows as i64),
                        KeyValue::new("spillway.records", records as i64),
                        KeyValue::new("spillway.payload_bytes", payload as i64),
                    ])
                    .start(t)
            });
            let retries = AtomicU32::new(0);
            let sources = self.insert_isolating(batch, &retries).await;
            if let Some(mut span) = span {
                span.set_attribute(KeyValue::new(
                    "spillway.retries",
                    i64::from(retries.load(Ordering::Relaxed)),
                ));
                if sources.len() < records {
                    span.set_status(Status::error("gave up at shutdown"));
                }
                span.end();
            }
            self.stats
                .batch_inserted(shard, table, rows, payload, started.elapsed());
            let done = Done::Inserted {
                shard,
                table,
                rows,
                sources,
            };
            if self.done.send(done).await.is_err() {
                return;
            }
        }
    }

    /// Inserts a batch; on a data error splits it in halves by source
    /// record. The records rejected alone are dead-lettered when the batch is
    /// done, unless the partition's run of rejections reaches the limit
    /// first: then the worker stalls instead (see [`Self::stall`]). Returns
    /// every source now durable.
    #[tracing::instrument(skip_all, fields(shard = batch.shard, table = batch.rows.table().name(), rows = batch.rows.len()))]
    async fn insert_isolating(&self, batch: Batch, retries: &AtomicU32) -> Vec<Source> {
        let key: Option<PartitionId> = batch
            .sources
            .first()
            .map(|s| PartitionId::new(&s.raw.topic, s.raw.partition));
        let mut stack = vec![batch];
        let mut finished = Vec::new();
        // Records rejected alone, held until the batch is done or stalls.
        let mut rejected: Vec<(Batch, String)> = Vec::new();
        while let Some(b) = stack.pop() {
            match self.insert_with_retry(&b, retries).await {
                Ok(()) => {
                    if let Some(key) = &key {
                        self.stalls.accepted(key);
                    }
                    finished.extend(b.sources);
                }
                Err(e @ (SinkError::Data { .. } | SinkError::Encode(_)))
                    if b.sources.len() <= 1 =>
                {
                    let reason = e.reason();
                    let Some(key) = &key else {
                        // Summary rows come from no record: nothing to keep.
                        warn!(error = %reason, "summary rows rejected; dropped");
                        continue;
                    };
                    let schema_problem = self.stalls.rejected(key);
                    rejected.push((b, reason));
                    if schema_problem {
                        let held: Vec<Batch> = rejected.drain(..).map(|(b, _)| b).collect();
                        stack.extend(held);
                        let why = "its records are rejected one after another (a column's \
                                   type changed, a migration not applied?), not poison";
                        let key = Some(key);
                        if !self
                            .stall(key, why, &mut stack, &mut finished, retries)
                            .await
                        {
                            return finished;
                        }
                    }
                }
                Err(SinkError::Schema { message: why, .. }) if !self.stalls.pauses() => {
                    // Configured never to pause: every record is a letter.
                    for s in b.sources {
                        if !self.dead_letter(&s, &why).await {
                            return finished;
                        }
                        finished.push(s);
                    }
                }
                Err(SinkError::Schema { message: why, .. }) => {
                    stack.push(b);
                    if !self
                        .stall(key.as_ref(), &why, &mut stack, &mut finished, retries)
                        .await
                    {
                        return finished;
                    }
                }
                Err(SinkError::Data { .. } | SinkError::Encode(_)) => {
                    let (left, right) = b.split();
                    stack.push(right);
                    stack.push(left);
                }
                Err(SinkError::Retryable { .. }) => {
                    // Only when shutting down: the records stay uncommitted
                    // and are read again by whoever owns the partition next.
                    return finished;
                }
            }
        }
        for (b, reason) in rejected {
            if let Some(s) = b.sources.first()
                && !self.dead_letter(s, &reason).await
            {
                return finished;
            }
            finished.extend(b.sources);
        }
        finished
    }

    /// A record the table rejects, to the dead-letter topic; false on shutdown.
    async fn dead_letter(&self, s: &Source, why: &str) -> bool {
        dead_letter(
            &self.dlq,
            s,
            "insert_rejected",
            why,
            &self.stats,
            &self.shutdown,
        )
        .await
    }

    /// A schema problem (`why`) on the rows of partition `key` (`None`:
    /// summary rows): pauses the partition and retries the top of `stack`
    /// with backoff until the server takes it (which pops it into `finished`
    /// and resumes the partition: true) or shutdown (false). Nothing is
    /// dead-lettered meanwhile.
    async fn stall(
        &self,
        key: Option<&PartitionId>,
        why: &str,
        stack: &mut Vec<Batch>,
        finished: &mut Vec<Source>,
        retries: &AtomicU32,
    ) -> bool {
        let records: usize = stack.iter().map(|b| b.sources.len()).sum();
        let (topic, partition) = key.map_or(("", -1), |k| (k.topic.as_str(), k.partition));
        if let Some(key) = key {
            self.stalls.stall(key);
        }
        self.stats.schema_stalls.inc();
        self.stats
            .partitions_stalled
            .set(self.stalls.count() as i64);
        error!(
            topic,
            partition,
            records,
            problem = why,
            "schema problem: the partition is paused and its rows are retried until the \
                table takes them; nothing is dead-lettered"
        );
        // Wait first: the table refused these rows a moment ago.
        let mut backoff = Backoff::new();
        let go_on = match stack.last() {
            None => true,
            Some(probe) => {
                backoff.wait(&self.shutdown).await
                    && retry_until(
                        &self.shutdown,
                        &mut backoff,
                        || self.insert_with_retry(probe, retries),
                        |e, _| {
                            // Still refused for its data or schema: probe
                            // again. Unreachable (retried until shutdown):
                            // give up.
                            let again = !e.is_retryable();
                            if again {
                                self.stats.insert_retries.inc();
                            }
                            again
                        },
                    )
                    .await
                    .is_ok()
            }
        };
        if go_on && let Some(b) = stack.pop() {
            finished.extend(b.sources);
            info!(
                topic,
                partition, "the table takes the partition's rows again; resuming it"
            );
        }
        if let Some(key) = key {
            self.stalls.resume(key);
        }
        self.stats
            .partitions_stalled
            .set(self.stalls.count() as i64);
        go_on
    }

    async fn insert_with_retry(&self, b: &Batch, retries: &AtomicU32) -> Result<(), SinkError> {
        let table = b.rows.table().name();
        // Which replica failed and whether the shard still answers is the
        // sink's to know (`shard_up` and `replica_up` are published from it).
        retry_until(
            &self.shutdown,
            &mut Backoff::new(),
            || self.sink.insert(b.shard, &b.rows, b.token.as_deref()),
            |e, next| match e {
                e if e.is_retryable() => {
                    self.stats.insert_retries.inc();
                    retries.fetch_add(1, Ordering::Relaxed);
                    warn!(shard = b.shard, table, rows = b.rows.len(), error = %e,
                          retry_in = ?next, "insert failed; retrying");
                    true
                }
                SinkError::Schema { .. } => false,
                e => {
                    warn!(shard = b.shard, table, rows = b.rows.len(), error = %e,
                          "batch rejected for its data; isolating the bad records");
                    false
                }
            },
        )
        .await
    }
}
