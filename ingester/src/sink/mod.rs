//! Where batches go: ClickHouse over HTTP(S), behind the [`Sink`] trait so
//! that component tests can fake it. The trait is here; why a call failed
//! is in [`error`]; the ClickHouse client in [`client`](mod@client); the rows of each
//! table in [`rows`], their RowBinary form in `rowbinary`, the column check
//! in `schema`, host to shard in [`shard`].
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod error;
pub mod https;
pub mod replicas;
pub(crate) mod rowbinary;
pub mod rows;
pub(crate) mod schema;
pub mod shard;

use std::future::Future;

pub use client::{ClickHouseSink, parse_version};
pub use error::{CLIENT_SIDE, SinkError, classify, classify_error};
pub use https::client;

use crate::sink::rows::{JournalRow, Rows};

/// Inserts rows into a shard, and keeps the insert journal.
pub trait Sink: Send + Sync + 'static {
    /// Inserts all rows in one INSERT, or fails. `token` names the range of
    /// offsets the rows were built from: an INSERT with a token the table
    /// has seen is dropped (`None`: rows that come from no record).
    fn insert(
        &self,
        shard: usize,
        rows: &Rows,
        token: Option<&str>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Records ranges in the insert journal, durably, in one write.
    fn write_journal(
        &self,
        rows: &[JournalRow],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The journaled ranges (first, last) of one partition of `group` whose
    /// last offset is at least `from`, in any order.
    fn read_journal(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> impl Future<Output = Result<Vec<(i64, i64)>, SinkError>> + Send;
}
