//! The CPU-bound stage: a fixed pool of decoder threads turns chunks of raw
//! records into table rows, in parallel, off the async runtime.
//!
//! Each decoder has its own bounded queue, fed round-robin by the poll
//! thread; results go to the pipeline through one bounded channel. Chunks
//! may finish out of order, which the offset watermark is built for.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::{Receiver, SyncSender};

use spillway_shared::{Limits, Record, decode};
use tokio::sync::mpsc;

use crate::pipeline::message::{Body, Chunk, Decoded, Event, Meta, Raw, RecordKind, Rejected};
use crate::precision::Precision;
use crate::sink::rows::Rows;
use crate::sink::rows::{sample_row_mem, sample_row_size, sample_rows, status_row};
use crate::sink::shard::shard_for;

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
            let (rows, row_bytes, mem_bytes, time_ms, kind) = match record {
                Record::Metrics(m) => {
                    let kind = RecordKind::Metrics {
                        tick: m.seq,
                        part: m.part,
                    };
                    let time_ms = m.time_ms;
                    let mut rows = Vec::with_capacity(m.samples.len());
                    sample_rows(m, precision, &mut rows);
                    let bytes = rows.iter().map(sample_row_size).sum();
                    let mem = rows.iter().map(sample_row_mem).sum();
                    (Rows::Samples(rows), bytes, mem, time_ms, kind)
                }
                Record::Status(s) => {
                    let row = status_row(&s);
                    let kind = RecordKind::Status { dropped: s.dropped };
                    (Rows::Status(vec![row]), 256, 1024, s.time_ms, kind)
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
                    kind,
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
            chunk: chunk.number,
            records: decoded,
        };
        if events.blocking_send(event).is_err() {
            return;
        }
    }
}
