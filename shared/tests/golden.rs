//! Golden vectors: the encoding of the spec's example records is pinned byte
//! for byte. A failure here means the wire format changed: if that is
//! intended, it is a contract change (see `docs/record-format.md`, "Versioning"),
//! and the vectors are regenerated with `SPILLWAY_BLESS=1 cargo test -p spillway-shared`.

mod common;

use std::path::PathBuf;

use spillway_shared::{Limits, Record, decode, encode};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check_golden(name: &str, record: &Record) {
    let encoded = encode(record).unwrap();
    let path = golden_path(name);
    if std::env::var_os("SPILLWAY_BLESS").is_some() {
        std::fs::write(&path, hex::encode(&encoded) + "\n").unwrap();
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden vector {}: {e}", path.display()));
    let golden = hex::decode(text.trim()).unwrap();
    assert_eq!(
        hex::encode(&encoded),
        hex::encode(&golden),
        "encoding of {name} changed"
    );
    assert_eq!(&decode(&golden, &Limits::default()).unwrap(), record);
}

#[test]
fn metrics_record_golden_vector() {
    check_golden("metrics-v1.hex", &common::example_metrics());
}

#[test]
fn status_record_golden_vector() {
    check_golden("status-v1.hex", &common::example_status());
}

/// The hex dumps in the spec are those of the golden vectors, so the page
/// cannot drift from the code.
#[test]
fn spec_page_shows_the_golden_vectors() {
    let spec_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/record-format.md");
    let spec = std::fs::read_to_string(&spec_path).unwrap();
    for (name, record) in [
        ("metrics", common::example_metrics()),
        ("status", common::example_status()),
    ] {
        let dump = common::hex_dump(&encode(&record).unwrap());
        assert!(
            spec.contains(&dump),
            "docs/record-format.md lacks the current hex dump of the {name} example:\n{dump}"
        );
    }
}
