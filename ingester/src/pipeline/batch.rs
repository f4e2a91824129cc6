//! Batches: rows waiting for one INSERT into one (shard, table), with the
//! source records they came from, so that offsets move only once the rows
//! are durable and a rejected batch can be split record by record.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use crate::pipeline::message::Source;
use crate::sink::rows::Rows;
use crate::sink::rows::Table;

/// Rows waiting to be inserted into one (shard, table), with their sources.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) shard: usize,
    pub(crate) rows: Rows,
    pub(crate) sources: Vec<Source>,
    pub(crate) bytes: usize,
    pub(crate) created: Instant,
    /// The deduplication token of its INSERT (see `journal::token`); `None`
    /// for rows that come from no record.
    pub(crate) token: Option<String>,
}

impl Batch {
    /// An empty batch with room for `rows` rows from `sources` records.
    pub(crate) fn with_capacity(shard: usize, table: Table, rows: usize, sources: usize) -> Batch {
        let mut b = Batch::of(shard, Rows::with_capacity(table, rows));
        b.sources.reserve(sources);
        b
    }

    /// A batch of rows that come from no record (summaries).
    pub(crate) fn of(shard: usize, rows: Rows) -> Batch {
        Batch {
            shard,
            rows,
            sources: Vec::new(),
            bytes: 0,
            created: Instant::now(),
            token: None,
        }
    }

    /// Appends a record's rows.
    pub(crate) fn push(&mut self, rows: Rows, row_bytes: usize, mut source: Source) {
        source.start = self.rows.len();
        self.rows.append(rows);
        source.end = self.rows.len();
        self.bytes += row_bytes;
        self.sources.push(source);
    }

    pub(crate) fn payload_bytes(&self) -> usize {
        self.sources.iter().map(|s| s.raw.payload.len()).sum()
    }

    /// Splits the batch into two halves at a source-record boundary. Needs
    /// at least two sources. Each half's token extends the batch's with `.0`
    /// or `.1`: the same rejection splits a rebuilt batch the same way.
    pub(crate) fn split(self) -> (Batch, Batch) {
        let mid = self.sources.len() / 2;
        let cut = self.sources.get(mid).map_or(self.rows.len(), |s| s.start);
        let mut left_sources = self.sources;
        let mut right_sources = left_sources.split_off(mid);
        for s in &mut right_sources {
            s.start -= cut;
            s.end -= cut;
        }
        let mut left_rows = self.rows;
        let right_rows = left_rows.split_off(cut);
        let token = self.token;
        let half = |rows, sources, side: &str| Batch {
            shard: self.shard,
            rows,
            sources,
            bytes: 0,
            created: self.created,
            token: token.as_ref().map(|t| format!("{t}.{side}")),
        };
        (
            half(left_rows, left_sources, "0"),
            half(right_rows, right_sources, "1"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::message::{RangeId, Raw};
    use crate::sink::rows::StatusRow;

    fn status(host: &str) -> StatusRow {
        StatusRow {
            time: 0,
            time_ms: 0,
            host_id: host.into(),
            hostname: String::new(),
            instance_id: String::new(),
            agent_version: String::new(),
            uptime_ms: 0,
            last_seq: -1,
            spool_bytes: 0,
            spool_records: 0,
            dropped_first: vec![],
            dropped_last: vec![],
            last_error: String::new(),
        }
    }

    fn source(offset: i64) -> Source {
        Source {
            raw: Raw {
                topic: "t".into(),
                partition: 0,
                offset,
                key: None,
                payload: vec![0; 10],
            },
            cost: 10,
            meta: None,
            range: RangeId { epoch: 0, first: 0 },
            start: 0,
            end: 0,
        }
    }

    #[test]
    fn split_keeps_each_records_rows_with_it() {
        let mut b = Batch::with_capacity(0, Table::AgentStatus, 0, 0);
        for (i, n) in [1usize, 3, 2].into_iter().enumerate() {
            let rows = Rows::Status((0..n).map(|_| status(&i.to_string())).collect());
            b.push(rows, 1, source(i as i64));
        }
        b.token = Some("g:t:0:0-2".into());
        let (l, r) = b.split();
        assert_eq!(l.token.as_deref(), Some("g:t:0:0-2.0"));
        assert_eq!(r.token.as_deref(), Some("g:t:0:0-2.1"));
        assert_eq!((l.sources.len(), l.rows.len()), (1, 1));
        assert_eq!((r.sources.len(), r.rows.len()), (2, 5));
        assert_eq!((r.sources[0].start, r.sources[0].end), (0, 3));
        assert_eq!((r.sources[1].start, r.sources[1].end), (3, 5));
        let Rows::Status(rows) = &r.rows else {
            panic!("status rows")
        };
        assert_eq!(rows[3].host_id, "2");
    }
}
