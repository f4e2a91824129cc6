//! The messages the pipeline's stages pass each other: records as polled,
//! chunks of them, what decoding made of each, and the events and commands
//! between the consumer thread and the event loop. A leaf: it depends on
//! no stage.

use std::sync::mpsc::SyncSender;

use spillway_shared::SeqRange;

use crate::sink::rows::Rows;

/// A record as consumed.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
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

/// Why a record cannot be ingested.
pub(crate) struct Rejected {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

/// An offset to commit, with the durable records above it.
pub(crate) type CommitOffset = crate::pipeline::offsets::Commit;

/// What the pipeline hears from the Kafka side, in order.
pub(crate) enum Event {
    /// These partitions were assigned, each starting at this offset (the
    /// committed one, or the earliest; `None` if it could not be read).
    /// Sent before any of their records.
    Assigned {
        partitions: Vec<(String, i32, Option<i64>)>,
    },
    /// A chunk of decoded records: [`Chunk::number`] of the chunk
    /// (decoders may finish chunks out of order).
    Decoded { chunk: u64, records: Vec<Decoded> },
    /// These partitions are being revoked. Once every record of theirs among
    /// the first `chunks` chunks is durable (or at the deadline), reply with
    /// their watermarks.
    Revoke {
        partitions: Vec<(String, i32)>,
        chunks: u64,
        reply: SyncSender<Vec<CommitOffset>>,
    },
}

/// What the pipeline asks of the Kafka side.
pub(crate) enum Command {
    /// Commit these watermarks (asynchronously).
    Commit(Vec<CommitOffset>),
    /// Commit these synchronously, leave the group and stop.
    Close(Vec<CommitOffset>),
}
