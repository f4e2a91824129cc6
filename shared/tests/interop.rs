//! Interoperability: a record built by Python's `msgpack` package, straight
//! from the spec and without any Spillway code, decodes to the expected values.
//!
//! Needs `python3` with `msgpack` (`pip install msgpack`); `.ci/run` installs it.
//! A missing interpreter or package fails the test, it does not skip it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use spillway_shared::{Limits, decode};

fn python_record(kind: &str) -> Vec<u8> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/make_record.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .arg(kind)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (install Python 3)"));
    assert!(
        out.status.success(),
        "{} failed: {} (is the msgpack package installed? pip install msgpack)",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn python_metrics_record_decodes() {
    let bytes = python_record("metrics");
    assert_eq!(
        decode(&bytes, &Limits::default()).unwrap(),
        common::example_metrics()
    );
}

#[test]
fn python_status_record_decodes() {
    let bytes = python_record("status");
    assert_eq!(
        decode(&bytes, &Limits::default()).unwrap(),
        common::example_status()
    );
}
