//! Why a call to ClickHouse failed, classified by what to do about it:
//! retry, pause the partition (schema), or dead-letter the records (data).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

/// The client's error, kept as the source of a [`SinkError`].
pub type ClientError = Arc<clickhouse::error::Error>;

/// An INSERT (or another call to ClickHouse) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: network faults, timeouts, server overload, a table
    /// that is missing (a migration may be on its way).
    #[error("retryable insert error: {message}")]
    Retryable {
        /// What failed, and where.
        message: String,
        /// The client's error, if one said so.
        #[source]
        source: Option<ClientError>,
    },
    /// The table's columns do not take the rows (a type changed, a column
    /// missing): nothing was sent. Retried until the table is fixed,
    /// never dead-lettered.
    #[error("the table does not take the ingester's rows: {message}")]
    Schema {
        /// What does not fit, and where.
        message: String,
        /// The client's error, if one said so.
        #[source]
        source: Option<ClientError>,
    },
    /// The server (or the client, code [`CLIENT_SIDE`]) rejected the data
    /// itself; retrying the same rows cannot help.
    #[error("insert rejected (ClickHouse code {code}): {message}")]
    Data {
        /// ClickHouse error code.
        code: u32,
        /// The server's message.
        message: String,
    },
    /// The ingester could not encode its own rows as RowBinary (a value
    /// its type cannot carry): bad data, dead-lettered like [`Self::Data`].
    #[error("cannot encode the rows: {0}")]
    Encode(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl SinkError {
    /// Whether the same INSERT may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable { .. })
    }

    /// Why the rows were refused, for a dead letter's `spillway-error`.
    pub fn reason(&self) -> String {
        match self {
            SinkError::Data { code, message } => format!("ClickHouse code {code}: {message}"),
            other => other.to_string(),
        }
    }

    /// A retryable error without a client error behind it (a timeout).
    pub fn retryable(message: impl Into<String>) -> SinkError {
        SinkError::Retryable {
            message: message.into(),
            source: None,
        }
    }

    /// A schema problem found by the ingester's own column check.
    pub fn schema(message: impl Into<String>) -> SinkError {
        SinkError::Schema {
            message: message.into(),
            source: None,
        }
    }
}

impl From<clickhouse::error::Error> for SinkError {
    fn from(e: clickhouse::error::Error) -> SinkError {
        classify_error(e)
    }
}

impl From<crate::sink::rowbinary::Error> for SinkError {
    fn from(e: crate::sink::rowbinary::Error) -> SinkError {
        SinkError::Encode(Arc::new(e))
    }
}

impl From<crate::sink::schema::Error> for SinkError {
    fn from(e: crate::sink::schema::Error) -> SinkError {
        SinkError::Encode(Arc::new(e))
    }
}

/// ClickHouse error codes that mean "this data is bad", not "try later".
/// 6 CANNOT_PARSE_TEXT, 26/27 CANNOT_PARSE_*, 33 CANNOT_READ_ALL_DATA,
/// 53 TYPE_MISMATCH, 69 ARGUMENT_OUT_OF_BOUND, 70 CANNOT_CONVERT_TYPE,
/// 72 CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA, 131 TOO_LARGE_STRING_SIZE.
const DATA_ERROR_CODES: &[u32] = &[6, 26, 27, 33, 53, 69, 70, 72, 117, 131];

/// Classifies a failed call by the client's error variant first: network
/// faults and timeouts are worth retrying; rows the client cannot encode are
/// bad data (dead-lettered); a client and server that do not understand each
/// other (parameters, an unsupported URL scheme, a schema mismatch) are a
/// schema problem (retried, partitions paused, never dead-lettered). The
/// server's own errors are classified by their code ([`classify`]).
pub fn classify_error(e: clickhouse::error::Error) -> SinkError {
    use clickhouse::error::Error as E;
    let message = e.to_string();
    match &e {
        E::BadResponse(server) => classify(server),
        E::Custom(_)
        | E::SequenceMustHaveLength
        | E::InvalidUtf8Encoding(_)
        | E::InvalidTagEncoding(_)
        | E::VariantDiscriminatorIsOutOfBound(_)
        | E::Compression(_)
        | E::DataFormat(_) => SinkError::Data {
            code: CLIENT_SIDE,
            message,
        },
        E::InvalidParams(_)
        | E::Unsupported(_)
        | E::SchemaMismatch(_)
        | E::InvalidColumnsHeader(_) => SinkError::Schema {
            message,
            source: Some(Arc::new(e)),
        },
        // Network faults, timeouts, answers cut short, and whatever a later
        // client version adds: try again.
        _ => SinkError::Retryable {
            message,
            source: Some(Arc::new(e)),
        },
    }
}

/// The code of [`SinkError::Data`] when the client, not the server, refused
/// the rows (ClickHouse's own codes start at 1).
pub const CLIENT_SIDE: u32 = 0;

/// Classifies a server message by its `Code: N`.
pub fn classify(message: &str) -> SinkError {
    let code = message
        .split("Code: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<u32>().ok());
    match code {
        Some(code) if DATA_ERROR_CODES.contains(&code) => SinkError::Data {
            code,
            message: message.to_owned(),
        },
        _ => SinkError::retryable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_not_retried() {
        let e = classify("bad response: Code: 53, e.displayText() = DB::Exception: Type mismatch");
        assert!(!e.is_retryable());
        assert!(matches!(e, SinkError::Data { code: 53, .. }));
        assert!(classify("Code: 252. DB::Exception: Too many parts").is_retryable());
        assert!(classify("error trying to connect: Connection refused").is_retryable());
    }

    #[test]
    fn client_errors_are_classified_by_variant_first() {
        use clickhouse::error::Error as E;
        let io =
            || Box::new(std::io::Error::other("reset")) as Box<dyn std::error::Error + Send + Sync>;
        assert!(classify_error(E::Network(io())).is_retryable());
        assert!(classify_error(E::TimedOut).is_retryable());
        assert!(matches!(
            classify_error(E::BadResponse(
                "Code: 53. DB::Exception: Type mismatch".into()
            )),
            SinkError::Data { code: 53, .. }
        ));
        assert!(classify_error(E::BadResponse("Code: 252. Too many parts".into())).is_retryable());
        // A row the client cannot encode: the data, never retried forever.
        assert!(matches!(
            classify_error(E::Custom("u64 out of range".into())),
            SinkError::Data {
                code: CLIENT_SIDE,
                ..
            }
        ));
        // Client and server disagree: a schema problem, never dead-lettered.
        assert!(matches!(
            classify_error(E::Unsupported("invalid URL, scheme is not http".into())),
            SinkError::Schema { .. }
        ));
        assert!(matches!(
            classify_error(E::InvalidParams(io())),
            SinkError::Schema { .. }
        ));
    }
}
