//! Codec benchmark: encode and decode throughput of the wire format
//! (MessagePack maps with field names) against JSON and rmp-serde's compact
//! (array) encoding of the same record, and the sizes of each before and after
//! lz4 and zstd.
//!
//! The record is a real one: `spillway-agent once --format json` on the
//! benchmark machine (2 CPUs, 137 samples), kept in `benches/data/`.
//!
//!     cargo bench -p spillway-shared --bench codec
//!
//! The size table is printed first; criterion's figures follow. `bench/codec.sh`
//! runs this and writes the results file.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use spillway_shared::codec::{self, Limits, Wire};
use spillway_shared::record::Record;

const FIXTURE: &str = include_str!("data/agent-record.json");

/// Records per batch in the size table: a producer with linger batches the
/// records it has, and compression works on the batch.
const BATCH: usize = 10;

fn fixture() -> Record {
    let mut de = serde_json::Deserializer::from_str(FIXTURE);
    codec::decode_from(&mut de, &Limits::default()).expect("the fixture is a valid record")
}

fn samples(r: &Record) -> u64 {
    match r {
        Record::Metrics(m) => m.samples.len() as u64,
        Record::Status(_) => 1,
    }
}

/// The compact form's reader: what a positional decoder needs, field by field
/// in the order the writer emits them. It does no validation, which favours it.
#[derive(Deserialize, Serialize)]
#[allow(dead_code)] // read only to build the value, as a consumer would
struct CompactRecord {
    schema: u64,
    record_type: String,
    host_id: String,
    hostname: String,
    instance_id: String,
    agent_version: String,
    seq: u64,
    time_ms: u64,
    interval_ms: u64,
    samples: Vec<CompactSample>,
}

#[derive(Deserialize, Serialize)]
#[allow(dead_code)]
struct CompactSample {
    name: String,
    value: f64,
    kind: String,
    unit: String,
    labels: BTreeMap<String, String>,
}

type Encoder = fn(&Record) -> Vec<u8>;

fn encode_msgpack(r: &Record) -> Vec<u8> {
    codec::encode(r).expect("encode")
}

fn encode_compact(r: &Record) -> Vec<u8> {
    rmp_serde::to_vec(&Wire(r)).expect("encode compact")
}

fn encode_json(r: &Record) -> Vec<u8> {
    serde_json::to_vec(&Wire(r)).expect("encode json")
}

/// The next `BATCH` ticks of the same host: later `seq` and `time_ms`, every
/// value moved by a pseudo-random amount (so that compression does not see
/// the same bytes again, which would flatter it).
fn next_ticks(r: &Record) -> Vec<Record> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..BATCH as u64)
        .map(|i| {
            let mut next = r.clone();
            if let Record::Metrics(m) = &mut next {
                m.seq += i;
                m.time_ms += i * u64::from(m.interval_ms);
                for s in &mut m.samples {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    s.value *= 1.0 + (state % 1000) as f64 / 10_000.0;
                }
            }
            next
        })
        .collect()
}

fn print_sizes(r: &Record) {
    let ticks = next_ticks(r);
    let forms: [(&str, Encoder); 3] = [
        ("msgpack map (the wire format)", encode_msgpack),
        ("msgpack compact (arrays)", encode_compact),
        ("json", encode_json),
    ];
    println!(
        "record: {} samples; batch: {BATCH} consecutive ticks",
        samples(r)
    );
    println!();
    println!("| form | record | lz4 | zstd -3 | batch of {BATCH} | lz4 | zstd -3 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, encode) in forms {
        let one = encode(r);
        let batch: Vec<u8> = ticks.iter().flat_map(encode).collect();
        let lz4 = |b: &[u8]| lz4_flex::compress(b).len();
        let zstd = |b: &[u8]| zstd::bulk::compress(b, 3).expect("zstd").len();
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            one.len(),
            lz4(&one),
            zstd(&one),
            batch.len(),
            lz4(&batch),
            zstd(&batch),
        );
    }
    println!();
}

fn bench(c: &mut Criterion) {
    let record = fixture();
    print_sizes(&record);
    let n = samples(&record);
    let limits = Limits::default();
    let map = encode_msgpack(&record);
    let compact = encode_compact(&record);
    let json = encode_json(&record);

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(n));
    g.bench_function("msgpack_map", |b| {
        b.iter(|| encode_msgpack(black_box(&record)))
    });
    g.bench_function("msgpack_compact", |b| {
        b.iter(|| encode_compact(black_box(&record)))
    });
    g.bench_function("json", |b| b.iter(|| encode_json(black_box(&record))));
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(n));
    g.bench_function("msgpack_map", |b| {
        b.iter(|| codec::decode(black_box(&map), &limits).expect("decode"))
    });
    g.bench_function("msgpack_compact", |b| {
        b.iter(|| rmp_serde::from_slice::<CompactRecord>(black_box(&compact)).expect("decode"))
    });
    g.bench_function("json", |b| {
        b.iter(|| {
            let mut de = serde_json::Deserializer::from_slice(black_box(&json));
            codec::decode_from(&mut de, &limits).expect("decode")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
