//! The `spillway-agent` binary: argument parsing, logging, signals; the work
//! is in the library.

use spillway_shared::process;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use spillway_agent::config::{Config, ConfigErrors, LogFormat, ProcessEnv};
use tokio_util::sync::CancellationToken;

/// Collects host metrics and publishes them to Kafka for Spillway.
#[derive(Debug, Parser)]
#[command(
    name = "spillway-agent",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SPILLWAY_GIT_REVISION"), ")"),
    after_help = "Getting started:\n  \
        spillway-agent -c agent.toml check-config   # every problem at once, exit 2 if any\n  \
        spillway-agent -c agent.toml once           # collect one tick and print it, publish nothing\n  \
        spillway-agent -c agent.toml                # run; SIGHUP reloads, SIGTERM stops\n\n\
        Every key with its default: config/agent.example.toml; environment variables:\n\
        docs/configuration.md; what is collected: docs/metrics.md."
)]
struct Cli {
    /// Configuration file (TOML). Without one, the defaults apply.
    #[arg(short, long, global = true, env = "SPILLWAY_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the file and the environment).
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, global = true)]
    topic: Option<String>,
    /// Collection interval, e.g. `10s`.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Spool directory.
    #[arg(long, global = true)]
    spool_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Collect and publish until stopped (the default).
    Run,
    /// Collect one tick and print it; needs no Kafka.
    Once {
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        format: OnceFormat,
    },
    /// Validate the configuration, print every problem, and exit (2 if invalid).
    CheckConfig,
}

const PROGRAM: &str = "spillway-agent";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnceFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn load(cli: &Cli) -> Result<Config, ConfigErrors> {
    let mut config = Config::load(cli.config.as_deref(), &ProcessEnv)?;
    if let Some(b) = &cli.brokers {
        config.kafka.brokers = b.clone();
    }
    if let Some(t) = &cli.topic {
        config.kafka.topic = t.clone();
    }
    if let Some(i) = cli.interval {
        config.agent.interval = i;
    }
    if let Some(d) = &cli.spool_dir {
        config.buffer.spool_dir = d.clone();
    }
    if let Some(f) = cli.log_format {
        config.log.format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
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
    // One thread for the async work: collection runs on the blocking pool and
    // librdkafka has its own threads. This keeps the footprint small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(120))
        .build()
    {
        Ok(r) => r,
        Err(e) => return process::finish(PROGRAM, Err(format!("cannot start the runtime: {e}"))),
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Once { format } => {
                let record = spillway_agent::collect_once(&config, Duration::from_secs(1)).await;
                print_once(&record, format)
            }
            Command::Run | Command::CheckConfig => {
                let shutdown = CancellationToken::new();
                tokio::spawn(process::stop_on_signal(shutdown.clone()));
                spillway_agent::run(config, cli.config, shutdown).await
            }
        }
    });
    process::finish(PROGRAM, result)
}

/// Prints a record to stdout. A reader that stops early (`| head`) ends the
/// output quietly, as for any Unix tool, instead of a panic.
fn print_once(record: &spillway_shared::Record, format: OnceFormat) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = write_once(&mut out, record, format).and_then(|()| Ok(out.flush()?));
    match written {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn write_once(
    out: &mut impl std::io::Write,
    record: &spillway_shared::Record,
    format: OnceFormat,
) -> anyhow::Result<()> {
    match format {
        OnceFormat::Json => {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&spillway_shared::Wire(record))?
            )?;
        }
        OnceFormat::Text => {
            if let spillway_shared::Record::Metrics(m) = record {
                for s in &m.samples {
                    let labels: Vec<String> = s
                        .labels
                        .iter()
                        .map(|l| format!("{}={:?}", l.key, l.value))
                        .collect();
                    writeln!(
                        out,
                        "{} {{{}}} {} {}",
                        s.name,
                        labels.join(", "),
                        s.value,
                        s.unit
                    )?;
                }
            }
        }
    }
    Ok(())
}
