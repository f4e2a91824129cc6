//! The `spillway-ingester` binary: arguments, logging, signals.

use spillway_shared::process;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spillway_ingester::config::{Config, ConfigErrors, ProcessEnv, ShardConfig};
use tokio_util::sync::CancellationToken;

// Decoding builds several small strings per sample and drops them once the
// batch is inserted; under glibc's allocator that churn (malloc, free and
// fastbin consolidation) took about 40% of the ingester's CPU in a profiled
// drain. See bench/results for the before/after figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Consumes Spillway agent records from Kafka into ClickHouse.
#[derive(Debug, Parser)]
#[command(
    name = "spillway-ingester",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SPILLWAY_GIT_REVISION"), ")"),
    after_help = "Getting started:\n  \
        spillway-ingester -c ingester.toml check-config   # every problem at once, exit 2 if any\n  \
        spillway-ingester -c ingester.toml migrate        # create the tables on every shard\n  \
        spillway-ingester -c ingester.toml                # consume until SIGTERM\n\n\
        Every key with its default: config/ingester.example.toml; environment variables and\n\
        operations: docs/configuration.md, docs/operations.md, docs/troubleshooting.md."
)]
struct Cli {
    /// Configuration file (TOML). Without one, the defaults apply.
    #[arg(short, long, global = true, env = "SPILLWAY_INGESTER_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the file and the environment).
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// Consumer group id.
    #[arg(long, global = true)]
    group_id: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume and insert until stopped (the default).
    Run,
    /// Apply the schema migrations to every shard, then exit.
    Migrate {
        /// The schema profile for shards that have none yet (default: by
        /// server version: `modern` from ClickHouse 24.8 on).
        #[arg(long, value_enum)]
        profile: Option<spillway_ingester::tools::migrate::Profile>,
        /// Apply the migrations up to this version only (e.g. `0005`).
        #[arg(long)]
        until: Option<String>,
    },
    /// Validate the configuration, print every problem, exit 2 if invalid.
    CheckConfig,
    /// Drop partitions older than the [retention] settings, once, then exit.
    ///
    /// The running ingester does the same every `retention.check_interval`.
    Prune,
    /// Produce simulated agent records (for tests and benchmarks).
    Loadgen(spillway_ingester::tools::loadgen::LoadgenArgs),
    /// Ingest dead letters again once their cause is fixed, each record
    /// once however often this is run or interrupted (docs/operations.md).
    ReplayDlq(spillway_ingester::tools::replay::ReplayArgs),
}

const PROGRAM: &str = "spillway-ingester";

fn load(cli: &Cli) -> Result<Config, ConfigErrors> {
    let mut config = Config::load(cli.config.as_deref(), &ProcessEnv)?;
    if let Some(b) = &cli.brokers {
        config.kafka.brokers = b.clone();
    }
    if let Some(g) = &cli.group_id {
        config.kafka.group_id = g.clone();
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = load(&cli);
    let command = cli.command.unwrap_or(Command::Run);
    let check_only = matches!(command, Command::CheckConfig);
    let config = match process::start(PROGRAM, loaded, check_only) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return process::finish(PROGRAM, Err(format!("cannot start the runtime: {e}"))),
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Migrate { profile, until } => migrate(&config, profile, until).await,
            Command::Prune => prune(&config).await,
            Command::Loadgen(args) => {
                spillway_ingester::tools::loadgen::run(&config.kafka.client_config(), &args).await
            }
            Command::ReplayDlq(args) => replay_dlq(&config, &args).await,
            Command::Run | Command::CheckConfig => {
                let shutdown = CancellationToken::new();
                tokio::spawn(process::stop_on_signal(shutdown.clone()));
                spillway_ingester::run(config, shutdown).await
            }
        }
    });
    process::finish(PROGRAM, result)
}

async fn migrate(
    config: &Config,
    profile: Option<spillway_ingester::tools::migrate::Profile>,
    until: Option<String>,
) -> anyhow::Result<()> {
    let options = spillway_ingester::tools::migrate::Options {
        cluster: config.clickhouse.cluster.clone(),
        profile,
        retention: config.retention.clone(),
        until,
    };
    // Every replica of every shard: replicated tables are created on each
    // of them (no ON CLUSTER), and each keeps its own `schema_migrations`.
    for shard in config
        .clickhouse
        .shards
        .iter()
        .flat_map(ShardConfig::servers)
    {
        let shard = &shard;
        let r = spillway_ingester::tools::migrate::migrate_shard(shard, &options).await?;
        println!(
            "shard {} (ClickHouse {}), database {}:",
            r.url, r.server_version, shard.database
        );
        if let Some((p, why)) = &r.profile {
            println!("  profile   {} ({why})", p.name());
        }
        for m in &r.applied {
            println!("  applied   {m}");
        }
        for m in &r.unchanged {
            println!("  unchanged {m}");
        }
        for (m, why) in &r.skipped {
            println!("  skipped   {m}: {why}");
        }
        for t in &r.distributed {
            match &options.cluster {
                Some(c) => println!("  distributed table {t} over cluster {c}"),
                None => println!("  merge table {t} over the local table"),
            }
        }
        for t in &r.ttl {
            println!("  ttl       {t}");
        }
    }
    Ok(())
}

async fn replay_dlq(
    config: &Config,
    args: &spillway_ingester::tools::replay::ReplayArgs,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(process::stop_on_signal(shutdown.clone()));
    let sink = spillway_ingester::sink::ClickHouseSink::new(&config.clickhouse)?;
    let report = spillway_ingester::tools::replay::run(config, args, &sink, &shutdown).await?;
    println!(
        "replay-dlq{}: {report}",
        if args.dry_run { " (dry run)" } else { "" }
    );
    Ok(())
}

async fn prune(config: &Config) -> anyhow::Result<()> {
    for shard in config
        .clickhouse
        .shards
        .iter()
        .flat_map(ShardConfig::servers)
    {
        let shard = &shard;
        let dropped =
            spillway_ingester::tools::retention::prune_shard(shard, &config.retention).await?;
        println!(
            "shard {}, database {}: {} partition(s) dropped",
            shard.url,
            shard.database,
            dropped.len()
        );
        for d in dropped {
            println!("  dropped {} partition {}", d.table, d.partition_id);
        }
    }
    Ok(())
}
