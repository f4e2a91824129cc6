//! Property tests: every valid record survives encode → decode unchanged, and
//! no input, however mangled, makes the decoder panic.

use proptest::prelude::*;
use spillway_shared::{
    Label, Limits, MetricKind, MetricsRecord, Origin, Record, Sample, SeqRange, StatusRecord,
    decode, encode,
};

const NAME: &str = "[A-Za-z_:][A-Za-z0-9_:./-]{0,40}";

fn origin() -> impl Strategy<Value = Origin> {
    ("[a-z0-9-]{1,64}", ".{0,64}", "[a-f0-9-]{1,36}", ".{0,20}").prop_map(
        |(host_id, hostname, instance_id, agent_version)| Origin {
            host_id,
            hostname,
            instance_id,
            agent_version,
        },
    )
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        NAME,
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        prop_oneof![Just(MetricKind::Gauge), Just(MetricKind::Counter)],
        "[A-Za-z{}/1]{0,16}",
        proptest::collection::btree_map(NAME, ".{0,40}", 0..6),
    )
        .prop_map(|(name, value, kind, unit, labels)| Sample {
            name,
            value,
            kind,
            unit,
            labels: labels.into_iter().map(|(k, v)| Label::new(k, v)).collect(),
        })
}

fn metrics() -> impl Strategy<Value = Record> {
    (
        origin(),
        any::<u64>(),
        any::<u64>(),
        1..=u32::MAX,
        (1u32..5).prop_flat_map(|parts| (0..parts, Just(parts))),
        proptest::collection::vec(sample(), 0..20),
    )
        .prop_map(
            |(origin, seq, time_ms, interval_ms, (part, parts), samples)| {
                Record::Metrics(MetricsRecord {
                    origin,
                    seq,
                    time_ms,
                    interval_ms,
                    part,
                    parts,
                    samples,
                })
            },
        )
}

fn status() -> impl Strategy<Value = Record> {
    (
        origin(),
        any::<u64>(),
        any::<u64>(),
        any::<Option<u64>>(),
        any::<(u64, u64)>(),
        proptest::collection::vec((any::<u64>(), 0u64..1000), 0..10),
        proptest::option::of(".{0,100}"),
    )
        .prop_map(
            |(
                origin,
                time_ms,
                uptime_ms,
                last_seq,
                (spool_bytes, spool_records),
                dropped,
                last_error,
            )| {
                Record::Status(StatusRecord {
                    origin,
                    time_ms,
                    uptime_ms,
                    last_seq,
                    spool_bytes,
                    spool_records,
                    dropped: dropped
                        .into_iter()
                        .map(|(first, len)| SeqRange {
                            first,
                            last: first.saturating_add(len),
                        })
                        .collect(),
                    last_error,
                })
            },
        )
}

proptest! {
    #[test]
    fn valid_records_round_trip(record in prop_oneof![metrics(), status()]) {
        let bytes = encode(&record).unwrap();
        prop_assert_eq!(decode(&bytes, &Limits::default()).unwrap(), record);
    }

    #[test]
    fn mangled_input_never_panics(
        record in metrics(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&record).unwrap();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let cut = cut.index(bytes.len() + 1);
        // Any outcome but a panic is fine; errors must still render.
        if let Err(e) = decode(&bytes[..cut], &Limits::default()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
