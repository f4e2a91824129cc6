//! spillway-ingester: consumes agent records from Kafka and inserts them into
//! ClickHouse, committing offsets only once rows are durable.
//!
//! Layout (the pipeline's stages in the order data flows through them):
//! - [`pipeline`]: Kafka to durable rows and committed offsets: `poll` (the
//!   consumer thread), `decode` (decoder threads), [`pipeline::consume`] (the
//!   event loop: ranges, batches, the budget, commits), `insert` (insert
//!   workers), [`pipeline::offsets`], [`pipeline::journal`],
//!   [`pipeline::dlq`], `stall`, [`pipeline::quality`]; the messages between
//!   stages are in `pipeline::message`.
//! - [`sink`]: ClickHouse: the [`sink::Sink`] trait and its client, the rows
//!   of each table ([`sink::rows`]), their RowBinary form, column checks
//!   (`schema`), host to shard ([`sink::shard`]).
//! - [`tools`]: one-shot commands: [`tools::migrate`],
//!   [`tools::retention`] (`prune`), [`tools::topics`], [`tools::loadgen`],
//!   [`tools::replay`] (`replay-dlq`).
//! - [`config`], [`precision`] (the stored precision of gauges, a rule of
//!   the configuration), [`telemetry`] (metrics, `/health`, `/ready`),
//!   [`otlp`], [`tls`].
//!
//! Layers, lowest first; a module imports only from layers below its own
//! (`scripts/module-cycles.py --layers` checks it): `tls`,
//! `precision`; `config`; `sink`; `telemetry`; `pipeline`, `otlp`; `tools`.

pub mod config;
pub mod otlp;
pub mod pipeline;
pub mod precision;
pub mod sink;
pub mod telemetry;
pub mod tls;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::FutureProducer;
use spillway_shared::kafka_log::LogContext;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::sink::ClickHouseSink;
use crate::telemetry::Stats;

/// Runs the ingester until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::new());
    let http_shutdown = shutdown.child_token();
    spillway_shared::process::spawn_http(
        config.http.listen,
        || telemetry::router(stats.clone()),
        http_shutdown.clone(),
    );
    check_tables(&config.clickhouse.shards).await?;
    let producer: FutureProducer<LogContext> = config
        .kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create_with_context(LogContext::default())
        .context("cannot create the dead-letter producer")?;
    let admin_config = config.kafka.client_config();
    tools::topics::ensure_topic(&admin_config, &config.kafka.dlq_topic(), 1)
        .await
        .with_context(|| {
            format!(
                "Kafka at {} is not reachable (or refused to create the dead-letter topic {})",
                config.kafka.brokers,
                config.kafka.dlq_topic()
            )
        })?;
    let dlq = pipeline::dlq::DeadLetters::new(producer, config.kafka.dlq_topic());
    let sink = ClickHouseSink::new(&config.clickhouse).context("ClickHouse TLS settings")?;
    let otlp = otlp::start(
        &config.telemetry,
        &config.quality.ingester_id(),
        stats.clone(),
        Duration::from_secs(30),
    )?;
    let background = shutdown.child_token();
    tokio::spawn(probe_replicas(
        sink.clone(),
        stats.clone(),
        background.clone(),
    ));
    tokio::spawn(tools::retention::run(
        config.clickhouse.shards.clone(),
        config.retention.clone(),
        background.clone(),
    ));
    stats.set_ready(true);
    info!(dead_letter_topic = %config.kafka.dlq_topic(), "spillway-ingester starting");
    let tracer = otlp.as_ref().map(otlp::Otlp::tracer);
    let result = pipeline::consume::run(config, sink, dlq, stats.clone(), tracer, shutdown).await;
    stats.set_ready(false);
    background.cancel();
    http_shutdown.cancel();
    if let Some(otlp) = otlp {
        let _joined = tokio::task::spawn_blocking(move || otlp.shutdown()).await;
    }
    result
}

/// Refuses to start against a shard without the tables, saying how to fix
/// it. Each shard needs one replica that answers; a replica that answers
/// without the tables is an error too (`migrate` was not run on it).
async fn check_tables(shards: &[config::ShardConfig]) -> anyhow::Result<()> {
    for (i, shard) in shards.iter().enumerate() {
        let mut answered = false;
        let mut unreachable = Vec::new();
        for server in shard.servers() {
            let client =
                sink::client(&server).with_context(|| format!("ClickHouse at {}", server.url))?;
            let n: u64 = match client
                .query("SELECT count() FROM system.tables WHERE database = ? AND name IN ('samples', 'agent_status', 'ingest_quality', 'ingester_status', 'ingest_journal')")
                .bind(&server.database)
                .fetch_one()
                .await
            {
                Ok(n) => n,
                // The server answered: its database is missing.
                Err(clickhouse::error::Error::BadResponse(msg))
                    if msg.contains("Code: 81") || msg.contains("UNKNOWN_DATABASE") =>
                {
                    anyhow::bail!(
                        "database {} does not exist on {}: run `spillway-ingester migrate` first",
                        server.database,
                        server.url
                    );
                }
                Err(e) => {
                    unreachable.push(format!("{} is not reachable: {e}", server.url));
                    continue;
                }
            };
            if n < 5 {
                anyhow::bail!(
                    "database {} on {} lacks the samples/agent_status/ingest_quality/ingester_status/ingest_journal tables: run `spillway-ingester migrate` first",
                    server.database,
                    server.url
                );
            }
            answered = true;
        }
        if !answered {
            match unreachable.as_slice() {
                [one] => anyhow::bail!("ClickHouse at {one}"),
                all => anyhow::bail!(
                    "no replica of ClickHouse shard {i} is reachable: {}",
                    all.join("; ")
                ),
            }
        }
        for why in unreachable {
            tracing::warn!(shard = i, "{why}; starting on the shard's other replicas");
        }
    }
    Ok(())
}

/// Asks every replica `SELECT 1` every 5 s, and publishes what the sink
/// knows of its replicas every second, for `/ready`, `shard_up` and
/// `replica_up`: requests only tell when there is something to send.
async fn probe_replicas(sink: ClickHouseSink, stats: Arc<Stats>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    for tick in 0u64.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        for (i, replicas) in sink.shards().iter().enumerate() {
            if tick % 5 == 0 {
                for (j, replica) in replicas.members().iter().enumerate() {
                    let probe = replica.client.query("SELECT 1").fetch_one::<u8>();
                    let up = matches!(
                        tokio::time::timeout(Duration::from_secs(3), probe).await,
                        Ok(Ok(1))
                    );
                    replicas.probed(j, up);
                }
            }
            for replica in replicas.members() {
                stats.replica_up(i, &replica.url, replica.is_up());
            }
            stats.shard_up(i, replicas.any_up());
        }
    }
}
