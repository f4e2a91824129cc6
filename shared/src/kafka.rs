//! Kafka conventions of the wire contract (no Kafka client here: the agent
//! and the ingester bring their own).
//!
//! - The message key is the record's `host_id`, so one host's records keep
//!   their order within a partition.
//! - The value is one encoded record.
//! - Headers describe the value so that a consumer can route or reject it
//!   without decoding it. They are informative: the value is self-describing,
//!   and a reader must not trust a header over the value.

use crate::record::Record;

/// Header naming the value's encoding.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// The only content type schema version 1 defines.
pub const CONTENT_TYPE: &str = "application/msgpack";
/// Header carrying the schema version, in decimal.
pub const HEADER_SCHEMA: &str = "spillway-schema";
/// Header carrying the record type (`metrics` or `status`).
pub const HEADER_TYPE: &str = "spillway-type";

/// The default topic for agent records.
pub const DEFAULT_TOPIC: &str = "spillway.metrics";

/// The headers to attach to a record, as (name, value) pairs.
pub fn headers(record: &Record) -> [(&'static str, &'static str); 3] {
    [
        (HEADER_CONTENT_TYPE, CONTENT_TYPE),
        (HEADER_SCHEMA, schema_header()),
        (HEADER_TYPE, record.record_type().as_str()),
    ]
}

fn schema_header() -> &'static str {
    // A const fn cannot format; SCHEMA_VERSION is checked against this by a test.
    "1"
}

/// The message key for a record.
pub fn key(record: &Record) -> &str {
    record.host_id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SCHEMA_VERSION;

    #[test]
    fn schema_header_matches_version() {
        assert_eq!(schema_header(), SCHEMA_VERSION.to_string());
    }
}
