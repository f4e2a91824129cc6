//! Which shard a host's rows go to: `xxh64(host_id, seed 0) % shards`.
//! The hash is stable across versions and platforms, so a host's series stay
//! on one shard for as long as the shard count does not change.

/// The shard index for `host_id` among `shards` (> 0).
pub fn shard_for(host_id: &str, shards: usize) -> usize {
    let h = twox_hash::XxHash64::oneshot(0, host_id.as_bytes());
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    // XXH64("host-1", seed 0), as any xxHash implementation computes it.
    const PINNED: u64 = 3_315_700_079_531_242_717;

    #[test]
    fn stable_and_spread() {
        // Pinned: changing the hash would move every host's series.
        assert_eq!(twox_hash::XxHash64::oneshot(0, b"host-1"), PINNED);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("host-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(shard_for("anything", 1), 0);
    }
}
