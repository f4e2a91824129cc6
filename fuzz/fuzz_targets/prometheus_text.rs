//! The agent's Prometheus text parser (the `textfile` and `exec` inputs read
//! files and programs' output that the agent does not control). It must
//! never panic, and every sample it keeps must be one the wire contract
//! accepts: a record of them encodes and decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway_agent::collect::Samples;
use spillway_shared::codec::is_valid_name;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut out = Samples::default();
    if out.parse_prometheus(text, &[("source", "fuzz")]).is_err() {
        return;
    }
    for s in out.into_vec() {
        assert!(is_valid_name(&s.name), "kept an invalid name {:?}", s.name);
        assert!(s.value.is_finite(), "kept a non-finite value");
        assert!(s.labels.iter().all(|l| is_valid_name(&l.key)));
        assert!(
            s.labels.windows(2).all(|w| w[0] <= w[1]),
            "labels not sorted"
        );
    }
});
