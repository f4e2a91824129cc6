//! The record decoder on arbitrary bytes, as the ingester meets them on a
//! topic anyone can write to. It must never panic or allocate without bound
//! (the limits), and whatever it accepts must survive a round trip: encode
//! it again and decode it to the same record, then build its rows as the
//! ingester does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway_shared::{Limits, Record, decode, encode};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(record) = decode(data, &limits) else {
        return;
    };
    let again = encode(&record).expect("a decoded record encodes");
    // Our encoding may be longer than the input (which may use narrower
    // MessagePack types), so only the size limit is lifted for the trip back.
    let roomy = Limits {
        max_record_bytes: usize::MAX,
        ..Limits::default()
    };
    let back = decode(&again, &roomy).expect("a re-encoded record decodes");
    assert_eq!(record, back, "round trip changed the record");
    match back {
        Record::Metrics(m) => {
            let samples = m.samples.len();
            let mut rows = Vec::new();
            spillway_ingester::sink::rows::sample_rows(
                m,
                &spillway_ingester::precision::Precision::default(),
                &mut rows,
            );
            assert_eq!(rows.len(), samples);
        }
        Record::Status(s) => {
            let _ = spillway_ingester::sink::rows::status_row(&s);
        }
    }
});
