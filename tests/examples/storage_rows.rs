//! Record files and the ingester's own RowBinary, for the storage benchmark
//! (`bench/storage.sh`) and the modern-ClickHouse checks (`tests/chdb/`),
//! which load rows into chdb, an in-process ClickHouse without a server.
//!
//! - `storage_rows dump BROKERS TOPIC OUT`: every record of a topic, as
//!   consumed, into a record file (each record: u32 little-endian length,
//!   then the MessagePack payload).
//! - `storage_rows fleet HOSTS TICKS OUT`: simulated hosts
//!   (`loadgen --values host`: agent-shaped records whose values behave like
//!   host metrics) into a record file, 10 s apart, ending now.
//! - `storage_rows rows IN OUTDIR`: decodes a record file and sends its rows
//!   through the ingester's real ClickHouse sink to a capturing HTTP server
//!   on loopback. For each table, `OUTDIR/<table>.rowbinary` holds the
//!   request bodies (LZ4 blocks undone) and `OUTDIR/<table>.columns` the
//!   column list of the INSERT: exactly what a server would have received.
//!   Gauges get the default precision rules; `STORAGE_ROWS_EXACT=1` keeps
//!   the values as sent.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::{Query, State};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use spillway_ingester::config::{ClickHouseConfig, ShardConfig};
use spillway_ingester::precision::{Precision, default_rules};
use spillway_ingester::sink::rows::Rows;
use spillway_ingester::sink::rows::{sample_rows, status_row};
use spillway_ingester::sink::{ClickHouseSink, Sink};
use spillway_ingester::tools::loadgen::{LoadgenArgs, ValueShape};
use spillway_shared::{Limits, Record, decode, encode};

fn usage() -> ! {
    eprintln!(
        "usage: storage_rows dump BROKERS TOPIC OUT | fleet HOSTS TICKS OUT | rows IN OUTDIR"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["dump", brokers, topic, out] => dump(brokers, topic, Path::new(out)),
        ["fleet", hosts, ticks, out] => fleet(hosts.parse()?, ticks.parse()?, Path::new(out)),
        ["rows", input, outdir] => rows(Path::new(input), Path::new(outdir)).await,
        _ => usage(),
    }
}

fn write_record(out: &mut impl Write, payload: &[u8]) -> Result<()> {
    out.write_all(&u32::try_from(payload.len())?.to_le_bytes())?;
    out.write_all(payload)?;
    Ok(())
}

fn read_records(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("open {}", path.display()))?
        .read_to_end(&mut data)?;
    let mut out = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).context("truncated record file")?;
        let len = u32::from_le_bytes(len.try_into()?) as usize;
        let (payload, tail) = tail.split_at_checked(len).context("truncated record")?;
        out.push(payload.to_vec());
        rest = tail;
    }
    Ok(out)
}

fn dump(brokers: &str, topic: &str, out: &Path) -> Result<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "storage-rows-dump")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .context("no such topic")?
        .partitions()
        .len();
    let mut tpl = TopicPartitionList::new();
    let mut want = 0i64;
    for p in 0..partitions as i32 {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        want += high - low;
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut file = BufWriter::new(std::fs::File::create(out)?);
    let (mut n, mut idle) = (0i64, 0);
    while n < want && idle < 100 {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                write_record(&mut file, m.payload().unwrap_or_default())?;
                n += 1;
                idle = 0;
            }
            Some(Err(e)) => bail!("consumer error: {e}"),
            None => idle += 1,
        }
    }
    file.flush()?;
    println!(
        "dumped {n} of {want} records from {topic} to {}",
        out.display()
    );
    if n < want {
        bail!("{} records were not read", want - n);
    }
    Ok(())
}

fn fleet(hosts: usize, ticks: u64, out: &Path) -> Result<()> {
    let args = LoadgenArgs {
        topic: String::new(),
        hosts,
        ticks,
        samples: 0,
        host_prefix: "host".into(),
        partitions: 1,
        start_ms: None,
        interval: None,
        values: ValueShape::Host,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let interval_ms = 10_000u64;
    let start = (now.as_millis() as u64 / interval_ms - ticks) * interval_ms;
    let mut file = BufWriter::new(std::fs::File::create(out)?);
    for seq in 0..ticks {
        for h in 0..hosts {
            // A few ms of wake-up delay, as a real agent has.
            let jitter = (h as u64 * 7 + seq * 13) % 5;
            let r = spillway_ingester::tools::loadgen::record(
                &args,
                h,
                &format!("00000000-0000-4000-8000-{h:012}"),
                seq,
                start + seq * interval_ms + jitter,
                interval_ms as u32,
            );
            write_record(&mut file, &encode(&r)?)?;
        }
    }
    file.flush()?;
    println!(
        "{} records of {hosts} simulated hosts to {}",
        hosts as u64 * ticks,
        out.display()
    );
    Ok(())
}

/// Request bodies by table, and each table's column list.
#[derive(Default)]
struct Captured {
    bodies: BTreeMap<String, Vec<u8>>,
    columns: BTreeMap<String, String>,
}

type Shared = Arc<Mutex<Captured>>;

/// Undoes ClickHouse's compressed-block framing (16-byte checksum, method
/// byte, compressed and uncompressed sizes, then the LZ4 block).
fn decompress(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 25 {
            bail!("truncated compressed block");
        }
        let method = body[16];
        let compressed = u32::from_le_bytes(body[17..21].try_into()?) as usize;
        let size = u32::from_le_bytes(body[21..25].try_into()?) as usize;
        let block = body.get(25..16 + compressed).context("truncated block")?;
        match method {
            0x82 => out.extend(lz4_flex::block::decompress(block, size)?),
            0x02 => out.extend_from_slice(block),
            other => bail!("compression method {other:#x} not handled"),
        }
        body = &body[16 + compressed..];
    }
    Ok(out)
}

async fn capture(
    State(shared): State<Shared>,
    Query(params): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> (axum::http::StatusCode, String) {
    let query = params.get("query").cloned().unwrap_or_default();
    // The sink asks a shard a few things before its first INSERT (a SELECT
    // in the body, answered in RowBinary): the version (a modern one), a
    // count (0: no `samples_in`, not replicated), a table's columns (none:
    // "table unknown", and the INSERT goes on).
    if query.is_empty() && body.starts_with(b"SELECT") {
        let answer = if body.starts_with(b"SELECT version()") {
            let v = "26.9.2.1";
            format!("{}{v}", char::from(v.len() as u8))
        } else if body.starts_with(b"SELECT count()") {
            "\0".repeat(8)
        } else {
            String::new()
        };
        return (axum::http::StatusCode::OK, answer);
    }
    // "INSERT INTO `table`(`a`,`b`) FORMAT RowBinary" or "INSERT INTO table (`a`, `b`) ..."
    let Some((table, columns)) = query
        .strip_prefix("INSERT INTO ")
        .and_then(|q| q.split_once('('))
        .and_then(|(t, rest)| Some((t, rest.split_once(')')?.0)))
    else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            format!("not an insert: {query}"),
        );
    };
    let data = if params.get("decompress").is_some_and(|v| v == "1") {
        match decompress(&body) {
            Ok(d) => d,
            Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()),
        }
    } else {
        body.to_vec()
    };
    let table = table.trim().trim_matches('`').to_owned();
    let columns: String = columns
        .chars()
        .filter(|c| *c != '`' && !c.is_whitespace())
        .collect();
    let mut c = shared.lock().unwrap_or_else(|p| p.into_inner());
    c.columns.insert(table.clone(), columns);
    c.bodies.entry(table).or_default().extend(data);
    (axum::http::StatusCode::OK, String::new())
}

async fn rows(input: &Path, outdir: &Path) -> Result<()> {
    let records = read_records(input)?;
    let shared: Shared = Arc::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(capture))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sink = ClickHouseSink::new(&ClickHouseConfig {
        shards: vec![ShardConfig {
            url: format!("http://{addr}"),
            ..ShardConfig::default()
        }],
        ..ClickHouseConfig::default()
    })?;
    let limits = Limits::default();
    // The ingester's default precision rules, or exact values with
    // STORAGE_ROWS_EXACT=1 (the previous layout stored them so).
    let precision = if std::env::var("STORAGE_ROWS_EXACT").is_ok_and(|v| v == "1") {
        Precision::default()
    } else {
        Precision::new(&default_rules())
    };
    let (mut samples, mut status) = (Vec::new(), Vec::new());
    for payload in &records {
        match decode(payload, &limits)? {
            Record::Metrics(m) => sample_rows(m, &precision, &mut samples),
            Record::Status(s) => status.push(status_row(&s)),
        }
    }
    let n = samples.len();
    // Batches of the ingester's default size.
    let batches = samples
        .chunks(200_000)
        .map(|c| Rows::Samples(c.to_vec()))
        .chain((!status.is_empty()).then_some(Rows::Status(status)));
    for batch in batches {
        sink.insert(0, &batch, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    std::fs::create_dir_all(outdir)?;
    let captured = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
    for (table, body) in &captured.bodies {
        let path: PathBuf = outdir.join(format!("{table}.rowbinary"));
        std::fs::write(&path, body)?;
        std::fs::write(
            outdir.join(format!("{table}.columns")),
            &captured.columns[table],
        )?;
    }
    println!(
        "{} records, {n} sample rows; tables: {}",
        records.len(),
        captured
            .bodies
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
