//! The messages the pipeline's stages pass each other: records as polled,
//! chunks of them, what decoding made of each, and the events and commands
//! between the consumer thread and the event loop, what workers report
//! back. It depends on no stage: only on the rows' types and the offsets'
//! [`Commit`].

use std::sync::mpsc::SyncSender;

use spillway_shared::SeqRange;

use crate::pipeline::offsets::Commit;
use crate::sink::rows::{Rows, Table};

/// A record as consumed.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
}

/// One partition of one topic: how the stages name a partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PartitionId {
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

impl PartitionId {
    pub(crate) fn new(topic: &str, partition: i32) -> PartitionId {
        PartitionId {
            topic: topic.to_owned(),
            partition,
        }
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Records handed to one decoder at once.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    /// Chunks are numbered from 0 in poll order.
    pub(crate) number: u64,
    pub(crate) records: Vec<Raw>,
    pub(crate) bytes: usize,
}

/// What the data accounting needs to know of a record.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) host_id: String,
    pub(crate) instance_id: String,
    pub(crate) time_ms: u64,
    pub(crate) kind: RecordKind,
}

/// The kind-specific part of [`Meta`].
#[derive(Debug, Clone)]
pub(crate) enum RecordKind {
    /// A metrics record: its tick number and part.
    Metrics { tick: u64, part: u32 },
    /// A status record: the ticks its agent reports dropped.
    Status { dropped: Vec<SeqRange> },
}

/// A decoded record: its rows, or why it has none.
pub(crate) struct Decoded {
    pub(crate) raw: Raw,
    pub(crate) outcome: Result<Body, Rejected>,
}

/// The rows of a good record and where they go.
pub(crate) struct Body {
    pub(crate) shard: usize,
    pub(crate) rows: Rows,
    /// Approximate RowBinary size of the rows.
    pub(crate) row_bytes: usize,
    /// Approximate memory the rows hold.
    pub(crate) mem_bytes: usize,
    pub(crate) meta: Meta,
}

/// One source record inside a batch.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) raw: Raw,
    /// Bytes counted against the memory budget (payload and rows).
    pub(crate) cost: usize,
    pub(crate) meta: Option<Meta>,
    /// The range the record belongs to.
    pub(crate) range: RangeId,
    /// Rows of this record in the batch: `rows[start..end]`.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Source {
    /// A record of `range` whose rows are not placed in a batch yet.
    pub(crate) fn new(raw: Raw, cost: usize, meta: Option<Meta>, range: RangeId) -> Source {
        Source {
            raw,
            cost,
            meta,
            range,
            start: 0,
            end: 0,
        }
    }
}

/// Which range of its partition a record belongs to (see `ranges.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangeId {
    /// The assignment of the partition that cut the range: a range of an
    /// earlier assignment (revoked undrained, then assigned here again) is
    /// not the current one's.
    pub(crate) epoch: u64,
    /// The range's first offset.
    pub(crate) first: i64,
}

/// What a worker reports back to the event loop: these records are
/// durable. Records missing from a report were given up on at shutdown and
/// stay uncommitted.
pub(crate) enum Done {
    /// One batch's rows, inserted into `table` on `shard`.
    Inserted {
        shard: usize,
        table: Table,
        rows: usize,
        sources: Vec<Source>,
    },
    /// Records written to the dead-letter topic.
    DeadLettered { sources: Vec<Source> },
}

/// Why a record cannot be ingested.
pub(crate) struct Rejected {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

/// What the pipeline hears from the Kafka side, in order.
pub(crate) enum Event {
    /// These partitions were assigned, each starting at this offset (the
    /// committed one, or the earliest; `None` if it could not be read).
    /// Sent before any of their records.
    Assigned {
        partitions: Vec<(PartitionId, Option<i64>)>,
    },
    /// A chunk of decoded records: [`Chunk::number`] of the chunk
    /// (decoders may finish chunks out of order).
    Decoded { chunk: u64, records: Vec<Decoded> },
    /// These partitions are being revoked. Once every record of theirs among
    /// the first `chunks` chunks is durable (or at the deadline), reply with
    /// their watermarks.
    Revoke {
        partitions: Vec<PartitionId>,
        chunks: u64,
        reply: SyncSender<Vec<Commit>>,
    },
}

/// What the pipeline asks of the Kafka side.
pub(crate) enum Command {
    /// Commit these watermarks (asynchronously).
    Commit(Vec<Commit>),
    /// Commit these synchronously, leave the group and stop.
    Close(Vec<Commit>),
}
