//! The agent's configuration: a TOML file, then environment overrides, then
//! command-line flags. [`Config::validate`] reports every problem at once and
//! never touches the network.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity and timing.
    pub agent: AgentConfig,
    /// What to collect.
    pub collect: CollectConfig,
    /// Where to publish.
    pub kafka: KafkaConfig,
    /// Memory queue and disk spool.
    pub buffer: BufferConfig,
    /// The optional HTTP listener for `/health` and `/metrics`.
    pub http: HttpConfig,
    /// Logs.
    pub log: LogConfig,
    /// OpenTelemetry export of the agent's own metrics.
    pub telemetry: TelemetryConfig,
    /// Deprecated environment variables that were used (logged at start).
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The environment variables that set something (logged at start).
    #[serde(skip)]
    pub set_by_env: Vec<String>,
}

/// The agent's environment: `SPILLWAY_AGENT_*` ([`Config::apply_env`]).
pub const ENV: EnvPolicy = EnvPolicy {
    prefix: "SPILLWAY_AGENT_",
    vars: &[
        EnvVar::new("SPILLWAY_AGENT_CONFIG"),
        EnvVar::renamed("SPILLWAY_AGENT_KAFKA_BROKERS", &["SPILLWAY_KAFKA_BROKERS"]),
        EnvVar::new("SPILLWAY_AGENT_KAFKA_TOPIC"),
        EnvVar::new("SPILLWAY_AGENT_INTERVAL"),
        EnvVar::new("SPILLWAY_AGENT_HOST_ID"),
        EnvVar::new("SPILLWAY_AGENT_HOSTNAME"),
        EnvVar::new("SPILLWAY_AGENT_HOST_ROOT"),
        EnvVar::new("SPILLWAY_AGENT_SPOOL_DIR"),
        EnvVar::new("SPILLWAY_AGENT_KAFKA_TLS_CA_FILE"),
        EnvVar::new("SPILLWAY_AGENT_KAFKA_TLS_CERT_FILE"),
        EnvVar::new("SPILLWAY_AGENT_KAFKA_TLS_KEY_FILE"),
        EnvVar::new("SPILLWAY_AGENT_KAFKA_SASL_MECHANISM"),
        EnvVar::new("SPILLWAY_AGENT_KAFKA_SASL_USERNAME"),
        EnvVar::new("SPILLWAY_AGENT_KAFKA_SASL_PASSWORD_FILE"),
        EnvVar::new("SPILLWAY_AGENT_HTTP_LISTEN"),
        EnvVar::new("SPILLWAY_AGENT_LOG_FORMAT"),
    ],
};

/// OpenTelemetry (OTLP over HTTP) export of the agent's self-metrics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`
    /// (metrics go to `/v1/metrics`). Absent: no export.
    pub otlp_endpoint: Option<String>,
    /// Export interval.
    #[serde(with = "humantime_serde")]
    pub otlp_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            otlp_interval: Duration::from_secs(60),
        }
    }
}

/// Identity and timing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Collection interval; ticks are aligned to multiples of it on the wall clock.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Upper bound of the phase offset, drawn once per process, that shifts
    /// every aligned tick, to spread a fleet's load.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Stable host id. Empty: `/etc/machine-id`, else the hostname.
    pub host_id: String,
    /// Host name to report. Empty: the system's.
    pub hostname: String,
    /// Time budget of each collector per tick. A collector that is late is
    /// reported and skipped; it is not waited for. Capped at 80% of the interval.
    #[serde(with = "humantime_serde")]
    pub collector_timeout: Duration,
    /// How often a status (heartbeat) record is published.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// On SIGTERM, how long to keep delivering before spooling the rest and exiting.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interval: Duration::from_secs(10),
            jitter: Duration::ZERO,
            host_id: String::new(),
            hostname: String::new(),
            collector_timeout: Duration::from_secs(2),
            status_interval: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// What to collect.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// Collectors to turn off, by name: `cpu`, `memory`, `filesystem`, `disk`,
    /// `network`, `system`, `processes`, `agent`.
    pub disable: Vec<String>,
    /// Publish CPU utilization per logical CPU as well as in total.
    pub per_cpu: bool,
    /// Filesystem types to skip. The default skips pseudo filesystems.
    pub filesystem_ignore_types: Vec<String>,
    /// Mount points to skip, by prefix.
    pub filesystem_ignore_mount_prefixes: Vec<String>,
    /// Network interfaces to skip, by exact name.
    pub network_ignore_interfaces: Vec<String>,
    /// Disk devices to skip, by prefix (partitions and virtual devices).
    pub disk_ignore_prefixes: Vec<String>,
    /// How many processes to publish by CPU and by memory (0 turns it off).
    pub top_processes: usize,
    /// Prometheus text files (`*.prom`) in this directory are read each tick.
    pub textfile_dir: Option<PathBuf>,
    /// Commands whose standard output (Prometheus text) is read each tick.
    pub exec: Vec<ExecConfig>,
    /// The host's root filesystem as mounted in a container (`/host`, with
    /// the container in the host's PID and network namespaces). Filesystems
    /// then come from the host's mount table (`/proc/1/mounts`) and are
    /// measured under this path; the host id and name from its
    /// `etc/machine-id` and `etc/hostname`. Unset: this system's own.
    pub host_root: Option<PathBuf>,
}

/// The default list of pseudo filesystems, as node_exporter skips them.
pub const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
    "tmpfs",
    "ramfs",
    "fuse.lxcfs",
];

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            disable: Vec::new(),
            per_cpu: true,
            filesystem_ignore_types: PSEUDO_FILESYSTEMS.iter().map(|s| s.to_string()).collect(),
            filesystem_ignore_mount_prefixes: vec![
                "/proc".into(),
                "/sys".into(),
                "/dev".into(),
                "/run/".into(),
            ],
            network_ignore_interfaces: vec!["lo".into()],
            disk_ignore_prefixes: vec!["loop".into(), "ram".into(), "zram".into()],
            top_processes: 5,
            textfile_dir: None,
            host_root: None,
            exec: Vec::new(),
        }
    }
}

/// One `exec` input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Kill the command if it runs longer than this.
    #[serde(with = "humantime_serde", default = "default_exec_timeout")]
    pub timeout: Duration,
}

fn default_exec_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Compression of Kafka batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4: cheap and good for metrics.
    #[default]
    Lz4,
    /// Zstandard: smaller, more CPU.
    Zstd,
    /// Gzip.
    Gzip,
    /// None.
    None,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

/// Where to publish.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Topic for metrics and status records.
    pub topic: String,
    /// Batch compression.
    pub compression: Compression,
    /// How long librdkafka waits to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long one delivery may take before the record goes to the spool.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Largest message the broker accepts; larger ticks are split.
    pub max_message_bytes: usize,
    /// TLS towards the brokers (`[kafka.tls]`); plaintext when absent.
    pub tls: Option<KafkaTls>,
    /// SASL authentication (`[kafka.sasl]`); none when absent.
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties, passed through; one that `tls` or
    /// `sasl` sets is an error.
    pub properties: Properties,
}

impl KafkaConfig {
    /// The `tls` and `sasl` blocks together.
    pub fn security(&self) -> KafkaSecurity<'_> {
        KafkaSecurity {
            tls: self.tls.as_ref(),
            sasl: self.sasl.as_ref(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: spillway_shared::kafka::DEFAULT_TOPIC.into(),
            compression: Compression::Lz4,
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(10),
            max_message_bytes: 1_000_000,
            tls: None,
            sasl: None,
            properties: Properties::default(),
        }
    }
}

/// How hard the spool pushes its writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync after every record: survives power loss, costs a disk flush per tick.
    Always,
    /// Leave it to the OS: survives a process crash (kill -9), not power loss.
    #[default]
    Never,
}

/// Memory queue and disk spool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Bytes of encoded records held in memory while the broker is slow,
    /// before they go to the spool.
    pub memory_bytes: usize,
    /// Directory of the disk spool (created owner-only).
    pub spool_dir: PathBuf,
    /// Spool size cap; at the cap the oldest records are dropped and reported.
    pub spool_max_bytes: u64,
    /// Size of one spool segment file; the unit in which old data is dropped.
    pub spool_segment_bytes: u64,
    /// When spool writes are fsynced.
    pub fsync: FsyncPolicy,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            memory_bytes: 4 * 1024 * 1024,
            spool_dir: PathBuf::from("/var/lib/spillway-agent/spool"),
            spool_max_bytes: 256 * 1024 * 1024,
            spool_segment_bytes: 4 * 1024 * 1024,
            fsync: FsyncPolicy::Never,
        }
    }
}

/// The collectors a user can disable.
pub const COLLECTORS: &[&str] = &[
    "cpu",
    "memory",
    "filesystem",
    "disk",
    "network",
    "system",
    "processes",
    "agent",
];

pub use spillway_shared::kafka_security::{KafkaSasl, KafkaSecurity, KafkaTls, SaslMechanism};
pub use spillway_shared::process::{HttpConfig, LogConfig, LogFormat};
pub use spillway_shared::settings::{ConfigErrors, EnvSource, ProcessEnv, Properties};
use spillway_shared::settings::{EnvPolicy, EnvVar, http_url_problem};

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        spillway_shared::settings::parse_toml(text)
    }

    /// Loads a file (or the defaults when `path` is `None`), applies the
    /// environment, and validates ([`spillway_shared::settings::load`]).
    pub fn load(
        path: Option<&std::path::Path>,
        env: &dyn EnvSource,
    ) -> Result<Config, ConfigErrors> {
        spillway_shared::settings::load(path, env)
    }

    /// Applies `SPILLWAY_AGENT_*` overrides; returns the problems found (the
    /// policy of [`spillway_shared::settings::EnvPolicy`]: an empty value is
    /// unset, an unknown `SPILLWAY_AGENT_*` variable is an error, an old name
    /// works with a warning in [`Config::warnings`]).
    ///
    /// | variable | key | old name |
    /// |---|---|---|
    /// | `SPILLWAY_AGENT_KAFKA_BROKERS` | `kafka.brokers` | `SPILLWAY_KAFKA_BROKERS` |
    /// | `SPILLWAY_AGENT_KAFKA_TOPIC` | `kafka.topic` | |
    /// | `SPILLWAY_AGENT_INTERVAL` | `agent.interval` | |
    /// | `SPILLWAY_AGENT_HOST_ID` | `agent.host_id` | |
    /// | `SPILLWAY_AGENT_HOSTNAME` | `agent.hostname` | |
    /// | `SPILLWAY_AGENT_HOST_ROOT` | `collect.host_root` | |
    /// | `SPILLWAY_AGENT_SPOOL_DIR` | `buffer.spool_dir` | |
    /// | `SPILLWAY_AGENT_HTTP_LISTEN` | `http.listen` | |
    /// | `SPILLWAY_AGENT_LOG_FORMAT` | `log.format` | |
    /// | `SPILLWAY_AGENT_CONFIG` | the configuration file (`--config`) | |
    pub fn apply_env(&mut self, env: &dyn EnvSource) -> Vec<String> {
        let mut r = ENV.reader(env);
        if let Some(v) = r.get("SPILLWAY_AGENT_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = r.get("SPILLWAY_AGENT_KAFKA_TOPIC") {
            self.kafka.topic = v;
        }
        if let Some(d) = r.duration("SPILLWAY_AGENT_INTERVAL") {
            self.agent.interval = d;
        }
        if let Some(v) = r.get("SPILLWAY_AGENT_HOST_ID") {
            self.agent.host_id = v;
        }
        if let Some(v) = r.get("SPILLWAY_AGENT_HOSTNAME") {
            self.agent.hostname = v;
        }
        if let Some(v) = r.get("SPILLWAY_AGENT_HOST_ROOT") {
            self.collect.host_root = Some(v.into());
        }
        if let Some(v) = r.get("SPILLWAY_AGENT_SPOOL_DIR") {
            self.buffer.spool_dir = v.into();
        }
        let mut problems = spillway_shared::kafka_security::apply_env(
            &mut self.kafka.tls,
            &mut self.kafka.sasl,
            &mut r,
            ENV.prefix,
        );
        if let Some(a) = r.parse("SPILLWAY_AGENT_HTTP_LISTEN") {
            self.http.listen = Some(a);
        }
        if let Some(f) = r.parse("SPILLWAY_AGENT_LOG_FORMAT") {
            self.log.format = f;
        }
        self.set_by_env = r.applied();
        let (errors, warnings) = r.finish();
        self.warnings = warnings;
        problems.extend(errors);
        problems
    }

    /// Checks every rule and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut e = Vec::new();
        let a = &self.agent;
        if a.interval < Duration::from_millis(100) {
            e.push("agent.interval must be at least 100ms".to_owned());
        }
        if a.interval > Duration::from_secs(3600) {
            e.push("agent.interval must be at most 1h".to_owned());
        }
        if a.jitter >= a.interval {
            e.push("agent.jitter must be shorter than agent.interval".to_owned());
        }
        if a.collector_timeout.is_zero() {
            e.push("agent.collector_timeout must be above 0".to_owned());
        }
        if a.status_interval < a.interval {
            e.push("agent.status_interval must be at least agent.interval".to_owned());
        }
        if a.shutdown_timeout > Duration::from_secs(300) {
            e.push("agent.shutdown_timeout must be at most 5m".to_owned());
        }
        if a.host_id.len() > 128 {
            e.push("agent.host_id must be at most 128 bytes".to_owned());
        }
        for name in &self.collect.disable {
            if !COLLECTORS.contains(&name.as_str()) {
                e.push(format!(
                    "collect.disable: unknown collector `{name}` (known: {})",
                    COLLECTORS.join(", ")
                ));
            }
        }
        if let Some(root) = &self.collect.host_root
            && !root.is_absolute()
        {
            e.push(format!(
                "collect.host_root must be an absolute path, got `{}`",
                root.display()
            ));
        }
        if self.collect.top_processes > 100 {
            e.push("collect.top_processes must be at most 100".to_owned());
        }
        for (i, x) in self.collect.exec.iter().enumerate() {
            if x.command.is_empty() || x.command[0].is_empty() {
                e.push(format!("collect.exec[{i}].command must name a program"));
            }
            if x.timeout.is_zero() {
                e.push(format!("collect.exec[{i}].timeout must be above 0"));
            }
        }
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            e.push("kafka.brokers must not be empty".to_owned());
        }
        if k.topic.is_empty()
            || k.topic.len() > 249
            || !k
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            e.push(format!(
                "kafka.topic `{}` is not a valid Kafka topic name ([A-Za-z0-9._-], 1 to 249)",
                k.topic
            ));
        }
        if k.delivery_timeout < Duration::from_secs(1) {
            e.push("kafka.delivery_timeout must be at least 1s".to_owned());
        }
        if k.max_message_bytes < 4096 {
            e.push("kafka.max_message_bytes must be at least 4096".to_owned());
        }
        for key in ["bootstrap.servers", "enable.idempotence", "acks"] {
            if k.properties.contains_key(key) {
                e.push(format!(
                    "kafka.properties.{key} is set by the agent and cannot be overridden"
                ));
            }
        }
        e.extend(k.security().validate("kafka", &k.properties));
        if k.sasl
            .as_ref()
            .is_some_and(|s| s.mechanism == SaslMechanism::OauthBearer)
        {
            e.push(
                "kafka.sasl.mechanism OAUTHBEARER is not available in the agent: its build leaves \
                 out libcurl, which OIDC needs, to stay small (docs/security.md); use SCRAM or mutual TLS"
                    .to_owned(),
            );
        }
        let b = &self.buffer;
        if b.memory_bytes < 64 * 1024 {
            e.push("buffer.memory_bytes must be at least 64 KiB".to_owned());
        }
        if b.spool_segment_bytes < 4096 {
            e.push("buffer.spool_segment_bytes must be at least 4096".to_owned());
        }
        if b.spool_max_bytes < 2 * b.spool_segment_bytes {
            e.push(
                "buffer.spool_max_bytes must be at least twice buffer.spool_segment_bytes"
                    .to_owned(),
            );
        }
        if let Some(url) = &self.telemetry.otlp_endpoint {
            e.extend(http_url_problem("telemetry.otlp_endpoint", url));
        }
        if self.telemetry.otlp_interval < Duration::from_secs(1) {
            e.push("telemetry.otlp_interval must be at least 1s".to_owned());
        }
        if b.spool_dir.as_os_str().is_empty() {
            e.push("buffer.spool_dir must not be empty".to_owned());
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(e))
        }
    }

    /// Whether collector `name` is enabled.
    pub fn enabled(&self, name: &str) -> bool {
        !self.collect.disable.iter().any(|d| d == name)
    }
}

impl spillway_shared::settings::Settings for Config {
    fn apply_env(&mut self, env: &dyn EnvSource) -> Vec<String> {
        Config::apply_env(self, env)
    }
    fn read_files(&mut self) -> Vec<String> {
        spillway_shared::kafka_security::read_files(
            &mut self.kafka.tls,
            &mut self.kafka.sasl,
            "kafka",
        )
    }
    fn validate(&self) -> Result<(), ConfigErrors> {
        Config::validate(self)
    }
}

impl spillway_shared::process::ProgramConfig for Config {
    fn warnings(&self) -> &[String] {
        &self.warnings
    }
    fn set_by_env(&self) -> &[String] {
        &self.set_by_env
    }
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_valid_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../config/agent.example.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.agent.interval, Duration::from_secs(10));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[agent]\nintervl = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("intervl"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let c = Config::from_toml(
            r#"
            [agent]
            interval = "10ms"
            [collect]
            disable = ["cpu", "gpu"]
            [kafka]
            topic = "bad topic"
            brokers = ""
            "#,
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.0.len() >= 4, "{err}");
        assert!(err.to_string().contains("agent.interval"));
        assert!(err.to_string().contains("`gpu`"));
        assert!(err.to_string().contains("kafka.topic"));
        assert!(err.to_string().contains("kafka.brokers"));
    }

    #[test]
    fn environment_overrides_apply_and_report_bad_values() {
        let mut c = Config::default();
        let errors = c.apply_env(&[
            ("SPILLWAY_KAFKA_BROKERS", "k:1"),
            ("SPILLWAY_AGENT_INTERVAL", "1s"),
            ("SPILLWAY_AGENT_LOG_FORMAT", "xml"),
        ]);
        assert_eq!(c.kafka.brokers, "k:1");
        assert_eq!(c.agent.interval, Duration::from_secs(1));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("xml"));
        // Every variable that was set is named, a bad value's too.
        assert_eq!(
            c.set_by_env,
            [
                "SPILLWAY_KAFKA_BROKERS",
                "SPILLWAY_AGENT_INTERVAL",
                "SPILLWAY_AGENT_LOG_FORMAT"
            ]
        );
        assert_eq!(
            c.warnings,
            [
                "SPILLWAY_KAFKA_BROKERS is deprecated and will stop working in the next release; use SPILLWAY_AGENT_KAFKA_BROKERS"
            ]
        );
    }

    #[test]
    fn an_unknown_agent_variable_is_an_error_and_other_programs_variables_are_not() {
        let mut c = Config::default();
        let errors = c.apply_env(&[
            ("SPILLWAY_AGENT_INTERVALL", "1s"),
            ("SPILLWAY_INGESTER_TOPICS", "t"),
            ("SPILLWAY_AGENT_HOST_ROOT", "/host"),
        ]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("SPILLWAY_AGENT_INTERVALL: unknown variable"));
        assert_eq!(c.collect.host_root, Some("/host".into()));
    }

    #[test]
    fn an_interval_without_a_unit_is_refused_showing_the_form() {
        let mut c = Config::default();
        let errors = c.apply_env(&[("SPILLWAY_AGENT_INTERVAL", "abc")]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("SPILLWAY_AGENT_INTERVAL: `abc` is not a duration")
                && errors[0].contains("like `10s`"),
            "{errors:?}"
        );
    }
}
