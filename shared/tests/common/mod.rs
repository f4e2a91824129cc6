//! The example records of `docs/record-format.md`, shared by the golden and
//! interop tests. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

use spillway_shared::{
    Label, MetricKind, MetricsRecord, Origin, Record, Sample, SeqRange, StatusRecord,
};

pub(crate) fn origin() -> Origin {
    Origin {
        host_id: "4c4c4544-0042-3510-8052-b4c04f4e4d32".into(),
        hostname: "web-1".into(),
        instance_id: "0b7e6f1c-5d2a-4c8e-9f3b-2a1d0c9e8f7a".into(),
        agent_version: "0.1.0".into(),
    }
}

/// The metrics example: two samples, one gauge and one counter.
pub(crate) fn example_metrics() -> Record {
    Record::Metrics(MetricsRecord {
        origin: origin(),
        seq: 42,
        time_ms: 1_763_776_800_000,
        interval_ms: 10_000,
        part: 0,
        parts: 1,
        samples: vec![
            Sample {
                name: "system.cpu.utilization".into(),
                value: 0.125,
                kind: MetricKind::Gauge,
                unit: "1".into(),
                labels: vec![Label::new("cpu.mode", "user")],
            },
            Sample {
                name: "system.network.io".into(),
                value: 123_456_789.0,
                kind: MetricKind::Counter,
                unit: "By".into(),
                labels: vec![
                    Label::new("network.interface.name", "eth0"),
                    Label::new("network.io.direction", "transmit"),
                ],
            },
        ],
    })
}

/// The status example: the agent dropped ticks 3 to 5 and 9.
pub(crate) fn example_status() -> Record {
    Record::Status(StatusRecord {
        origin: origin(),
        time_ms: 1_763_776_805_000,
        uptime_ms: 3_600_000,
        last_seq: Some(42),
        spool_bytes: 65_536,
        spool_records: 12,
        dropped: vec![
            SeqRange { first: 3, last: 5 },
            SeqRange { first: 9, last: 9 },
        ],
        last_error: Some("broker transport failure".into()),
    })
}

/// Formats bytes as the hex dump printed in `docs/record-format.md`:
/// 16 bytes a line, offset first.
pub(crate) fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("{:04x}  {}\n", i * 16, hex.join(" ")));
    }
    out
}
