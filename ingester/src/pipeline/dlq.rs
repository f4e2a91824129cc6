//! The dead-letter topic: records that cannot be ingested, with why.
//!
//! Headers: `spillway-error-kind` (a stable name, e.g. `non_finite`,
//! `insert_rejected`), `spillway-error` (the message, naming the field),
//! `spillway-source-topic`, `spillway-source-partition`,
//! `spillway-source-offset`. Key and value are the original ones, untouched.
//!
//! Records that decode to nothing become `Letter`s in their range; the
//! event loop hands them to one `worker`, which writes many at a time and
//! reports them durable. Records a table rejects are written by their insert
//! worker through `dead_letter`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use spillway_shared::kafka_log::LogContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::pipeline::message::{Done, Source};
use crate::telemetry::Stats;
use spillway_shared::retry::{Backoff, retry_until};

/// Where a dead letter came from and why it died.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Original key.
    pub key: Option<&'a [u8]>,
    /// Original value.
    pub payload: &'a [u8],
    /// Stable error kind.
    pub kind: &'a str,
    /// Human-readable error.
    pub error: &'a str,
}

/// Produces dead letters.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer<LogContext>,
    topic: String,
}

impl DeadLetters {
    /// Wraps a producer.
    pub fn new(producer: FutureProducer<LogContext>, topic: String) -> Self {
        DeadLetters { producer, topic }
    }

    /// Sends one dead letter and waits for the broker's acknowledgement, so
    /// that the source offset is committed only once the letter is safe.
    pub async fn send(&self, d: &DeadLetter<'_>) -> Result<(), rdkafka::error::KafkaError> {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let headers = [
            ("spillway-error-kind", d.kind.as_bytes()),
            ("spillway-error", d.error.as_bytes()),
            ("spillway-source-topic", d.topic.as_bytes()),
            ("spillway-source-partition", partition.as_bytes()),
            ("spillway-source-offset", offset.as_bytes()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new_with_capacity(5), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        let mut record = FutureRecord::to(&self.topic)
            .payload(d.payload)
            .headers(headers);
        if let Some(k) = d.key {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Sends one dead letter, retrying with the shared backoff until the
    /// broker has it (true) or `shutdown` fires (false: the letter was not
    /// written, so its source offset must stay uncommitted).
    pub async fn send_until_safe(&self, d: &DeadLetter<'_>, shutdown: &CancellationToken) -> bool {
        retry_until(
            shutdown,
            &mut Backoff::new(),
            || async {
                tokio::select! {
                    sent = self.send(d) => sent.map_err(Some),
                    () = shutdown.cancelled() => Err(None),
                }
            },
            |e, next| match e {
                Some(e) => {
                    error!(error = %e, retry_in = ?next,
                           "cannot write to the dead-letter topic; retrying");
                    true
                }
                // Shutdown: the letter was not written.
                None => false,
            },
        )
        .await
        .is_ok()
    }
}

/// A record that goes to the dead-letter topic instead of a table.
pub(crate) struct Letter {
    pub(crate) source: Source,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

/// Letters queued for the dead-letter worker.
const LETTERS_QUEUED: usize = 1024;

/// Spawns the dead-letter worker on `tasks`; returns its queue.
pub(crate) fn spawn(
    tasks: &tokio_util::task::TaskTracker,
    dlq: DeadLetters,
    done: mpsc::Sender<Done>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> mpsc::Sender<Letter> {
    let (tx, letters) = mpsc::channel::<Letter>(LETTERS_QUEUED);
    tasks.spawn(worker(letters, dlq, done, stats, shutdown));
    tx
}

/// Sends letters to the dead-letter topic, many at a time, and reports them
/// durable.
async fn worker(
    mut letters: mpsc::Receiver<Letter>,
    dlq: DeadLetters,
    done: mpsc::Sender<Done>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let mut group = Vec::new();
    while letters.recv_many(&mut group, 256).await > 0 {
        let sent = join_all(
            group
                .iter()
                .map(|l| dead_letter(&dlq, &l.source, l.kind, &l.message, &stats, &shutdown)),
        )
        .await;
        // Letters not written (shutdown) are not reported: their records
        // stay uncommitted and are read again.
        let written = sent.iter().all(|s| *s);
        let report = Done::DeadLettered {
            sources: group
                .drain(..)
                .zip(sent)
                .filter_map(|(l, sent)| sent.then_some(l.source))
                .collect(),
        };
        if done.send(report).await.is_err() || !written {
            return;
        }
    }
}

/// Writes a record to the dead-letter topic, retrying until it is there
/// (true): its offset is committed only once the letter is safe. False when
/// `shutdown` came first: the record stays uncommitted and is read again.
pub(crate) async fn dead_letter(
    dlq: &DeadLetters,
    s: &Source,
    kind: &str,
    error: &str,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> bool {
    let raw = &s.raw;
    warn!(topic = %raw.topic, partition = raw.partition, offset = raw.offset, kind, error,
          "record dead-lettered");
    let letter = DeadLetter {
        topic: &raw.topic,
        partition: raw.partition,
        offset: raw.offset,
        key: raw.key.as_deref(),
        payload: &raw.payload,
        kind,
        error,
    };
    let sent = dlq.send_until_safe(&letter, shutdown).await;
    if sent {
        stats.dead_letters(kind);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;

    #[tokio::test]
    async fn a_letter_that_cannot_be_written_gives_up_on_shutdown() {
        // No broker listens here: the send never completes by itself.
        let producer: FutureProducer<LogContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.timeout.ms", "300000")
            .create_with_context(LogContext::default())
            .expect("producer");
        let dlq = DeadLetters::new(producer, "t.dlq".into());
        let letter = DeadLetter {
            topic: "t",
            partition: 0,
            offset: 7,
            key: None,
            payload: b"x",
            kind: "decode",
            error: "bad",
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
        });
        let started = std::time::Instant::now();
        let sent = dlq.send_until_safe(&letter, &shutdown).await;
        assert!(!sent, "reported written without a broker");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
