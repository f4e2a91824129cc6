//! librdkafka's log lines and global errors, routed to `tracing` with each
//! kind (log facility, error code) at most once per 30 s, carrying the count
//! held back: while a broker is down librdkafka reports the same failure
//! several times a second. Debug lines are not throttled (they are off
//! unless asked for).

use std::time::Duration;

use crate::throttle::{Held, Throttle};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error, info, warn};

/// How often one kind of librdkafka message may be logged.
const PERIOD: Duration = Duration::from_secs(30);

/// The throttled sink for one client's librdkafka messages.
#[derive(Debug)]
pub struct KafkaLog(Throttle);

impl Default for KafkaLog {
    fn default() -> Self {
        Self(Throttle::new(PERIOD))
    }
}

impl KafkaLog {
    /// For `ClientContext::log`.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            debug!(target: "librdkafka", "{fac} {message}");
            return;
        }
        let Some(held) = self.0.admit(fac) else {
            return;
        };
        let m = Held {
            message,
            held,
            period: PERIOD,
        };
        match level {
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac} {m}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "{fac} {m}")
            }
            _ => error!(target: "librdkafka", "{fac} {m}"),
        }
    }

    /// For `ClientContext::error`. A broker out of reach is a warning: the
    /// client reconnects by itself, and the callers report what it costs.
    pub fn error(&self, e: KafkaError, reason: &str) {
        let code = e.rdkafka_error_code();
        let key = code.map_or_else(|| e.to_string(), |c| format!("{c:?}"));
        let Some(held) = self.0.admit(&key) else {
            return;
        };
        let m = Held {
            message: reason,
            held,
            period: PERIOD,
        };
        match code {
            Some(
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve,
            ) => warn!(target: "librdkafka", "{e}: {m}"),
            _ => error!(target: "librdkafka", "{e}: {m}"),
        }
    }
}

/// A client context that only logs (through [`KafkaLog`]).
#[derive(Debug, Default)]
pub struct LogContext(KafkaLog);

impl rdkafka::ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}
