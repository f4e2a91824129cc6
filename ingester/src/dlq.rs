//! The dead-letter topic: records that cannot be ingested, with why.
//!
//! Headers: `spillway-error-kind` (a stable name, e.g. `non_finite`,
//! `insert_rejected`), `spillway-error` (the message, naming the field),
//! `spillway-source-topic`, `spillway-source-partition`,
//! `spillway-source-offset`. Key and value are the original ones, untouched.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use spillway_shared::kafka_log::LogContext;

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
}
