//! The CPU-bound stage: a fixed pool of decoder threads turns chunks of raw
//! records into table rows, in parallel, off the async runtime.
//!
//! Each decoder has its own bounded queue, fed round-robin by the poll
//! thread; results go to the pipeline through one bounded channel. Chunks
//! may finish out of order, which the offset watermark is built for.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::{Receiver, SyncSender};

use spillway_shared::{Limits, Record, SeqRange, decode};
use tokio::sync::mpsc;

use crate::poll::Event;
use crate::precision::Precision;
use crate::rows::{sample_row_mem, sample_row_size, sample_rows, status_row};
use crate::shard::shard_for;
use crate::sink::Rows;

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
    /// Chunks are numbered in poll order.
    pub(crate) seq: u64,
    pub(crate) records: Vec<Raw>,
    pub(crate) bytes: usize,
}

/// What the data accounting needs to know of a record.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) host_id: String,
    pub(crate) instance_id: String,
    pub(crate) time_ms: u64,
    pub(crate) tick: Tick,
}

/// The kind-specific part of [`Meta`].
#[derive(Debug, Clone)]
pub(crate) enum Tick {
    /// A metrics record: its tick number and part.
    Metrics { seq: u64, part: u32 },
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

/// Decodes one record into rows for its shard.
pub(crate) fn decode_record(
    raw: Raw,
    limits: &Limits,
    precision: &Precision,
    shards: usize,
) -> Decoded {
    let outcome = match decode(&raw.payload, limits) {
        Err(e) => Err(Rejected {
            kind: e.kind(),
            message: e.to_string(),
        }),
        Ok(record) => {
            let origin = record.origin();
            let shard = shard_for(&origin.host_id, shards);
            let (host_id, instance_id) = (origin.host_id.clone(), origin.instance_id.clone());
            let (rows, row_bytes, mem_bytes, time_ms, tick) = match record {
                Record::Metrics(m) => {
                    let tick = Tick::Metrics {
                        seq: m.seq,
                        part: m.part,
                    };
                    let time_ms = m.time_ms;
                    let mut rows = Vec::with_capacity(m.samples.len());
                    sample_rows(m, precision, &mut rows);
                    let bytes = rows.iter().map(sample_row_size).sum();
                    let mem = rows.iter().map(sample_row_mem).sum();
                    (Rows::Samples(rows), bytes, mem, time_ms, tick)
                }
                Record::Status(s) => {
                    let row = status_row(&s);
                    let tick = Tick::Status { dropped: s.dropped };
                    (Rows::Status(vec![row]), 256, 1024, s.time_ms, tick)
                }
            };
            Ok(Body {
                shard,
                rows,
                row_bytes,
                mem_bytes,
                meta: Meta {
                    host_id,
                    instance_id,
                    time_ms,
                    tick,
                },
            })
        }
    };
    Decoded { raw, outcome }
}

/// The decoder threads and their input queues.
pub(crate) struct Decoders {
    pub(crate) inputs: Vec<SyncSender<Chunk>>,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts `threads` decoders.
pub(crate) fn start(
    threads: usize,
    shards: usize,
    precision: &Precision,
    events: mpsc::Sender<Event>,
) -> std::io::Result<Decoders> {
    let mut inputs = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        // Two chunks queued per decoder keep it busy without hoarding.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(2);
        let events = events.clone();
        let precision = precision.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("decode-{i}"))
                .spawn(move || decoder(rx, events, &precision, shards))?,
        );
        inputs.push(tx);
    }
    Ok(Decoders {
        inputs,
        threads: handles,
    })
}

fn decoder(
    input: Receiver<Chunk>,
    events: mpsc::Sender<Event>,
    precision: &Precision,
    shards: usize,
) {
    let limits = Limits::default();
    while let Ok(chunk) = input.recv() {
        let decoded: Vec<Decoded> = chunk
            .records
            .into_iter()
            .map(|raw| decode_record(raw, &limits, precision, shards))
            .collect();
        let event = Event::Decoded {
            seq: chunk.seq,
            records: decoded,
        };
        if events.blocking_send(event).is_err() {
            return;
        }
    }
}
