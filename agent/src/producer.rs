//! A Kafka producer whose deliveries resolve to futures, polled by a thread
//! of our own.
//!
//! Why not rdkafka's `FutureProducer`: its polling thread calls
//! `poll(100 ms)` in a loop, and rdkafka converts the time left to whole
//! milliseconds, so the last sub-millisecond of every window is a busy loop.
//! `bench/agent-footprint.sh` measured that at about 9 ms of CPU per second
//! for an otherwise idle agent, more than a whole collection. Polling in
//! long windows makes it negligible; delivery reports still arrive at once,
//! since a poll returns as soon as an event is queued.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use tokio::sync::oneshot;

use spillway_shared::kafka_log::KafkaLog;

/// How long one poll of the delivery queue may block. It bounds how long
/// the polling thread outlives its producer, and costs at most one spin of
/// under a millisecond per window.
const POLL_WINDOW: Duration = Duration::from_secs(10);

/// The outcome of one delivery: `Err` carries librdkafka's message.
pub type DeliveryOutcome = Result<(), String>;

#[derive(Default)]
struct DeliveryContext {
    log: KafkaLog,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<DeliveryOutcome>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.to_string()),
        };
        // A closed receiver means the publisher stopped waiting; nothing to do.
        if tx.send(outcome).is_err() {
            tracing::debug!("delivery report after its receiver was dropped");
        }
    }
}

/// The producer. Dropping it stops its polling thread within the poll window (10 s).
pub struct Producer {
    inner: Arc<BaseProducer<DeliveryContext>>,
    stop: Arc<AtomicBool>,
}

impl Producer {
    /// Creates the producer and its polling thread. librdkafka connects
    /// lazily, so this succeeds while the broker is down.
    pub fn new(config: &ClientConfig) -> KafkaResult<Producer> {
        let inner: Arc<BaseProducer<DeliveryContext>> =
            Arc::new(config.create_with_context(DeliveryContext::default())?);
        let stop = Arc::new(AtomicBool::new(false));
        let (producer, flag) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    producer.poll(POLL_WINDOW);
                }
            })
            .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
        Ok(Producer { inner, stop })
    }

    /// Messages queued in librdkafka and not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}

/// What the publisher needs of a Kafka producer: a trait, so that the
/// publisher's state machine is tested without a broker ([`Producer`] is the
/// real one).
pub trait Deliver: Send + 'static {
    /// Queues a message; the receiver resolves with its outcome.
    fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<oneshot::Receiver<DeliveryOutcome>, String>;
    /// A fatal error: this producer can no longer deliver.
    fn fatal_error(&self) -> Option<String>;
}

impl Deliver for Producer {
    /// Queues a message; the receiver resolves when the broker acknowledged
    /// it or librdkafka gave up (`message.timeout.ms`).
    fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<oneshot::Receiver<DeliveryOutcome>, String> {
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(tx))
            .key(key)
            .payload(payload)
            .headers(headers);
        self.inner.send(record).map_err(|(e, _)| e.to_string())?;
        Ok(rx)
    }

    /// librdkafka's fatal error, if it raised one: the instance can no longer
    /// deliver (e.g. the idempotent producer's state was lost when the
    /// broker came back empty) and must be replaced.
    fn fatal_error(&self) -> Option<String> {
        self.inner
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
