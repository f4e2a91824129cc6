//! The insert journal: which ranges of offsets each partition was cut into.
//!
//! Exactly-once rests on two facts. ClickHouse drops an INSERT it has seen
//! (same `insert_deduplication_token` on modern servers; same data in a
//! Replicated table on legacy ones). And an INSERT built from a given range of
//! one partition's offsets is the same whoever builds it: the rows come from
//! the records alone, in offset order. So every range is written here
//! *before* any of its rows is inserted; the next owner of the partition
//! reads the ranges above the committed offset and cuts its records at
//! exactly those boundaries, and ClickHouse drops whatever had landed.
//!
//! The journal is a table on the first shard (`ingest_journal`), not the
//! offset commit's metadata: some brokers (tansu 0.6) store commit metadata
//! and never return it. ARCHITECTURE.md ("Delivery guarantees") gives the
//! reasons and what happens when it cannot be reached.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use tracing::warn;

/// The deduplication token of every INSERT built from a range: what the
/// range is, not what its bytes are, so ClickHouse recognises the INSERT
/// however it was rebuilt. Tables deduplicate separately, so the INSERTs of
/// one range into different tables share it.
pub fn token(group: &str, topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{group}:{topic}:{partition}:{first}-{last}")
}

/// The ranges a new owner must rebuild, from the journal's entries for one
/// partition: those that start at or after `from` (the offset it starts
/// consuming at), in order, without overlaps.
///
/// An entry that straddles `from` cannot be rebuilt (its first records are
/// below where consumption starts; only a member of an older version, which
/// committed inside ranges, leaves one): it is dropped with a warning, and
/// its records go into new ranges. Overlapping entries come only from a
/// member that kept cutting after it lost the partition; the earliest is
/// kept.
pub fn to_rebuild(mut entries: Vec<(i64, i64)>, from: i64) -> Vec<(i64, i64)> {
    entries.sort_unstable();
    entries.dedup();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(entries.len());
    for (first, last) in entries {
        if last < from || first > last {
            continue;
        }
        if first < from {
            warn!(
                first,
                last, from, "a journaled range starts below the committed offset; not rebuilt"
            );
            continue;
        }
        if let Some(&(_, prev_last)) = out.last()
            && first <= prev_last
        {
            warn!(
                first,
                last, prev_last, "journaled ranges overlap; keeping the earlier"
            );
            continue;
        }
        out.push((first, last));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranges_at_or_above_the_start_are_rebuilt_in_order() {
        let entries = vec![(300, 399), (0, 99), (100, 199), (200, 299), (200, 299)];
        assert_eq!(to_rebuild(entries, 200), vec![(200, 299), (300, 399)]);
    }

    #[test]
    fn straddling_and_overlapping_ranges_are_dropped() {
        let entries = vec![(150, 249), (250, 300), (260, 280), (301, 301)];
        assert_eq!(to_rebuild(entries, 200), vec![(250, 300), (301, 301)]);
    }

    #[test]
    fn tokens_name_the_range() {
        assert_eq!(token("g", "t", 3, 10, 20), "g:t:3:10-20");
    }
}
