//! The process plumbing both binaries share (feature `process`): logging,
//! signals and the HTTP listener for `/health`, `/ready` and `/metrics`.
//! Each binary brings its own routes and metrics; how a process starts,
//! logs, listens and stops is the same for both.

mod http;
mod logging;
mod signals;

pub use http::{serve, spawn as spawn_http};

/// The OpenTelemetry resource both programs export under: the service name
/// (the program), `service.instance.id`, `service.version`, and whatever
/// else describes the process (the agent adds its host).
pub fn otlp_resource(
    program: &'static str,
    instance_id: &str,
    version: &str,
    more: impl IntoIterator<Item = opentelemetry::KeyValue>,
) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name(program)
        .with_attributes(
            [
                opentelemetry::KeyValue::new("service.instance.id", instance_id.to_owned()),
                opentelemetry::KeyValue::new("service.version", version.to_owned()),
            ]
            .into_iter()
            .chain(more),
        )
        .build()
}

/// Lets the OTLP exporters reach `https://` collectors: their HTTP client
/// (reqwest with `rustls-no-provider`) takes the process's default rustls
/// provider, and panics when building any client, even for `http://`, if
/// there is none. Installs ring, the provider the ingester's ClickHouse
/// client uses too; certificates are checked against the system's store
/// (`SSL_CERT_FILE` names another bundle). Call it before building an
/// exporter; a second call changes nothing.
pub fn install_tls_provider() {
    // An error means a provider is installed already.
    let _installed = rustls::crypto::ring::default_provider().install_default();
}

pub use logging::{LogConfig, LogFormat, init_logging};
pub use signals::{Signal, stop_on_signal, stop_on_signals};

use std::process::ExitCode;

use serde::Deserialize;

use crate::settings::ConfigErrors;

/// The `[http]` section of both programs: the optional listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for `/health`, `/metrics` (and the ingester's `/ready`),
    /// e.g. `127.0.0.1:9465`. Absent: no listener.
    pub listen: Option<std::net::SocketAddr>,
}

/// What every program's configuration tells the plumbing.
pub trait ProgramConfig {
    /// Deprecation warnings from loading it.
    fn warnings(&self) -> &[String];
    /// The environment variables that set something (over the file).
    fn set_by_env(&self) -> &[String];
    /// How it logs.
    fn log(&self) -> &LogConfig;
}

/// The start of both binaries' `main`: an invalid configuration lists every
/// problem and exits 2; `check-config` (`check_only`) prints the warnings
/// and the verdict and exits 0; otherwise logging starts, the warnings are
/// logged and the configuration is handed back to run with.
pub fn start<C: ProgramConfig>(
    program: &str,
    loaded: Result<C, ConfigErrors>,
    check_only: bool,
) -> Result<C, ExitCode> {
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{program}: invalid configuration:");
            for e in &errors.0 {
                eprintln!("  - {e}");
            }
            return Err(ExitCode::from(2));
        }
    };
    let from_env = config.set_by_env().join(", ");
    if check_only {
        for warning in config.warnings() {
            eprintln!("warning: {warning}");
        }
        println!("configuration is valid");
        if !from_env.is_empty() {
            println!("set by the environment: {from_env}");
        }
        return Err(ExitCode::SUCCESS);
    }
    init_logging(config.log().format, &config.log().level);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if !from_env.is_empty() {
        tracing::info!(variables = %from_env, "settings from the environment");
    }
    Ok(config)
}

/// The end of both binaries' `main`: an error is printed with its causes
/// and exits 1.
pub fn finish<E: std::fmt::Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
