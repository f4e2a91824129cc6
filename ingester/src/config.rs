//! The ingester's configuration: TOML file, environment overrides, flags.
//! [`Config::validate`] reports every problem at once and never connects.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where records come from.
    pub kafka: KafkaConfig,
    /// Where rows go.
    pub clickhouse: ClickHouseConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// Bounds on work in flight.
    pub pipeline: PipelineConfig,
    /// Data accounting (`ingest_quality`).
    pub quality: QualityConfig,
    /// How long data is kept.
    pub retention: RetentionConfig,
    /// How values are stored.
    pub storage: StorageConfig,
    /// The optional HTTP listener.
    pub http: HttpConfig,
    /// Logs.
    pub log: LogConfig,
    /// OpenTelemetry export.
    pub telemetry: TelemetryConfig,
    /// Deprecated environment variables that were used (logged at start).
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The environment variables that set something (logged at start).
    #[serde(skip)]
    pub set_by_env: Vec<String>,
}

/// The ingester's environment: `SPILLWAY_INGESTER_*` ([`Config::apply_env`]).
pub const ENV: EnvPolicy = EnvPolicy {
    prefix: "SPILLWAY_INGESTER_",
    vars: &[
        EnvVar::new("SPILLWAY_INGESTER_CONFIG"),
        EnvVar::renamed(
            "SPILLWAY_INGESTER_KAFKA_BROKERS",
            &["SPILLWAY_KAFKA_BROKERS"],
        ),
        EnvVar::new("SPILLWAY_INGESTER_TOPICS"),
        EnvVar::new("SPILLWAY_INGESTER_GROUP_ID"),
        EnvVar::renamed(
            "SPILLWAY_INGESTER_CLICKHOUSE_URLS",
            &["SPILLWAY_CLICKHOUSE_URLS", "SPILLWAY_CLICKHOUSE_URL"],
        ),
        EnvVar::renamed(
            "SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER",
            &["SPILLWAY_CLICKHOUSE_CLUSTER"],
        ),
        EnvVar::renamed(
            "SPILLWAY_INGESTER_CLICKHOUSE_DATABASE",
            &["SPILLWAY_CLICKHOUSE_DATABASE"],
        ),
        EnvVar::renamed(
            "SPILLWAY_INGESTER_CLICKHOUSE_USER",
            &["SPILLWAY_CLICKHOUSE_USER"],
        ),
        EnvVar::renamed(
            "SPILLWAY_INGESTER_CLICKHOUSE_PASSWORD",
            &["SPILLWAY_CLICKHOUSE_PASSWORD"],
        ),
        EnvVar::new("SPILLWAY_INGESTER_CLICKHOUSE_TLS_CA_FILE"),
        EnvVar::new("SPILLWAY_INGESTER_CLICKHOUSE_TLS_CERT_FILE"),
        EnvVar::new("SPILLWAY_INGESTER_CLICKHOUSE_TLS_KEY_FILE"),
        EnvVar::new("SPILLWAY_INGESTER_KAFKA_TLS_CA_FILE"),
        EnvVar::new("SPILLWAY_INGESTER_KAFKA_TLS_CERT_FILE"),
        EnvVar::new("SPILLWAY_INGESTER_KAFKA_TLS_KEY_FILE"),
        EnvVar::new("SPILLWAY_INGESTER_KAFKA_SASL_MECHANISM"),
        EnvVar::new("SPILLWAY_INGESTER_KAFKA_SASL_USERNAME"),
        EnvVar::new("SPILLWAY_INGESTER_KAFKA_SASL_PASSWORD_FILE"),
        EnvVar::new("SPILLWAY_INGESTER_HTTP_LISTEN"),
        EnvVar::new("SPILLWAY_INGESTER_LOG_FORMAT"),
    ],
};

/// Kafka consumer settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id; all instances of one deployment share it.
    pub group_id: String,
    /// Topic for records that cannot be ingested. Empty: the default
    /// (`<first topic>.dlq`).
    pub dead_letter_topic: String,
    /// Consumer session timeout: how fast a dead member's partitions move.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often the contiguous watermark is committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// TLS towards the brokers (`[kafka.tls]`); plaintext when absent.
    pub tls: Option<KafkaTls>,
    /// SASL authentication (`[kafka.sasl]`); none when absent.
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties (`partition.assignment.strategy`, ...);
    /// one that `tls` or `sasl` sets is an error.
    pub properties: Properties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: vec![spillway_shared::kafka::DEFAULT_TOPIC.into()],
            group_id: "spillway-ingester".into(),
            dead_letter_topic: String::new(),
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(100),
            tls: None,
            sasl: None,
            properties: Properties::default(),
        }
    }
}

impl KafkaConfig {
    /// The `tls` and `sasl` blocks together.
    pub fn security(&self) -> KafkaSecurity<'_> {
        KafkaSecurity {
            tls: self.tls.as_ref(),
            sasl: self.sasl.as_ref(),
        }
    }

    /// A librdkafka configuration with the brokers, the security blocks and
    /// the pass-through properties: the base of every client the ingester
    /// makes (consumer, dead-letter producer, admin).
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (key, value) in self.security().properties() {
            c.set(key, value);
        }
        for (key, value) in &self.properties {
            c.set(key, value);
        }
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// The dead-letter topic in force.
    pub fn dlq_topic(&self) -> String {
        if self.dead_letter_topic.is_empty() {
            format!(
                "{}.dlq",
                self.topics.first().map_or("spillway", String::as_str)
            )
        } else {
            self.dead_letter_topic.clone()
        }
    }
}

/// ClickHouse shards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// One entry per shard; a host's rows go to shard `xxh64(host_id) % N`.
    pub shards: Vec<ShardConfig>,
    /// Timeout of one INSERT.
    #[serde(with = "humantime_serde")]
    pub insert_timeout: Duration,
    /// A cluster defined in the servers' `remote_servers` whose shards are
    /// these shards. When set, `migrate` also creates `samples_all`,
    /// `samples_1m_all`, `agent_status_all` and `ingest_quality_all`
    /// (Distributed tables) for fleet-wide queries.
    pub cluster: Option<String>,
    /// HTTPS settings for every shard whose `tls` is not set.
    pub tls: ClickHouseTls,
}

/// Problems of a `tls` block (`key` names it in messages).
fn tls_problems(tls: &ClickHouseTls, key: &str) -> Vec<String> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return vec![format!(
            "{key}: cert_file and key_file go together (mutual TLS needs both)"
        )];
    }
    Vec::new()
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            shards: vec![ShardConfig::default()],
            insert_timeout: Duration::from_secs(30),
            cluster: None,
            tls: ClickHouseTls::default(),
        }
    }
}

/// One ClickHouse shard: one server (`url`), or the replicas of a
/// replicated shard (`replicas`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardConfig {
    /// HTTP(S) URL of a server, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The URLs of the shard's replicas, in order of preference (instead of
    /// `url`). INSERTs go to one replica that answers and move to the next
    /// on a connection error, a timeout or a retryable server error.
    pub replicas: Vec<String>,
    /// Database (created by `migrate`).
    pub database: String,
    /// User.
    pub user: String,
    /// Password. Prefer `password_file` or `SPILLWAY_CLICKHOUSE_PASSWORD`.
    pub password: Secret,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<std::path::PathBuf>,
    /// HTTPS settings of this shard; `clickhouse.tls` when absent.
    pub tls: Option<ClickHouseTls>,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            url: DEFAULT_URL.into(),
            replicas: Vec::new(),
            database: "spillway".into(),
            user: "default".into(),
            password: Secret::default(),
            password_file: None,
            tls: None,
        }
    }
}

/// A shard's URL when none is given.
const DEFAULT_URL: &str = "http://127.0.0.1:8123";

impl ShardConfig {
    /// The URLs of the shard's servers: `replicas`, or `url` alone.
    pub fn urls(&self) -> Vec<&str> {
        if self.replicas.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.replicas.iter().map(String::as_str).collect()
        }
    }

    /// One configuration per server of the shard (`url` set, no
    /// `replicas`): what connects to one server (`migrate`, `prune`).
    pub fn servers(&self) -> Vec<ShardConfig> {
        self.urls()
            .into_iter()
            .map(|url| ShardConfig {
                url: url.to_owned(),
                replicas: Vec::new(),
                ..self.clone()
            })
            .collect()
    }
}

/// When a range of one partition's offsets is closed (then journaled and
/// inserted, one INSERT per shard and table it has rows for): whichever
/// limit comes first. A range rebuilt from the journal keeps its journaled
/// boundaries instead.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Rows per range at most.
    pub max_rows: usize,
    /// Approximate bytes of rows per range at most.
    pub max_bytes: usize,
    /// Oldest row's wait at most; also the floor of each partition's insert
    /// period under light load, which keeps ClickHouse far from
    /// TOO_MANY_PARTS.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 200_000,
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(1),
        }
    }
}

/// Bounds on work in flight.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Bytes of consumed records not yet durable; above it the consumer stops
    /// taking records until half of it is free.
    pub memory_budget_bytes: usize,
    /// Concurrent INSERTs per shard.
    pub insert_concurrency: usize,
    /// Decoder threads (records → rows).
    pub decode_threads: usize,
    /// On a rebalance, how long to wait for a revoked partition's records to
    /// become durable so that its final offset can be committed. Past it, the
    /// records still in flight are read again by the next owner.
    #[serde(with = "humantime_serde")]
    pub rebalance_timeout: Duration,
    /// On SIGTERM, how long to flush and commit before leaving anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Records of one partition rejected by ClickHouse in a row (none
    /// accepted between) before it counts as a schema problem rather than
    /// poison: the partition is paused and its rows retried instead of
    /// dead-lettered. 0: never pause, always dead-letter.
    pub rejects_before_pause: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            memory_budget_bytes: 1024 * 1024 * 1024,
            insert_concurrency: 2,
            decode_threads: 2,
            rebalance_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            rejects_before_pause: 16,
        }
    }
}

/// Data accounting: tick gaps, duplicates and freshness per agent instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// How often a summary row per agent instance goes to `ingest_quality`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// This ingester's name in `ingest_quality`. Empty: `<hostname>-<pid>`.
    pub ingester_id: String,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            interval: Duration::from_secs(60),
            ingester_id: String::new(),
        }
    }
}

impl QualityConfig {
    /// The name in force.
    pub fn ingester_id(&self) -> String {
        if self.ingester_id.is_empty() {
            let host = rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned();
            format!("{host}-{}", std::process::id())
        } else {
            self.ingester_id.clone()
        }
    }
}

/// How values are stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Stored precision of gauges; the first rule that matches a metric
    /// applies; counters are stored exactly. `[]` stores every value as sent.
    pub precision: Vec<crate::precision::PrecisionRule>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            precision: crate::precision::default_rules(),
        }
    }
}

/// How long data is kept, in days; 0 keeps it forever. On the modern schema
/// profile `migrate` sets each table's TTL from these (whole parts are
/// dropped, `ttl_only_drop_parts`); on the legacy profile (ClickHouse before
/// 24.8, no TTL) the ingester drops whole daily (monthly for the hourly tier
/// and `ingest_quality`) partitions once they are entirely older than this.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// `samples`.
    pub samples_days: u32,
    /// `samples_1m` (the 1-minute tier).
    pub rollup_days: u32,
    /// `samples_1h` (the 1-hour tier).
    pub rollup_1h_days: u32,
    /// `agent_status` (heartbeat history).
    pub status_days: u32,
    /// `ingest_quality`.
    pub quality_days: u32,
    /// `ingest_journal` (the ranges of offsets each INSERT was built from;
    /// only the ranges not yet committed are ever read).
    pub journal_days: u32,
    /// How often partitions are checked.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            samples_days: 30,
            rollup_days: 400,
            rollup_1h_days: 1830,
            status_days: 90,
            quality_days: 90,
            journal_days: 7,
            check_interval: Duration::from_secs(3600),
        }
    }
}

/// OpenTelemetry export (OTLP over HTTP, protobuf).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Collector base URL, e.g. `http://127.0.0.1:4318`; absent: no export.
    /// Traces (one span per INSERT) go to `/v1/traces`, metrics to `/v1/metrics`.
    pub otlp_endpoint: Option<String>,
}

pub use crate::tls::ClickHouseTls;
pub use spillway_shared::kafka_security::{KafkaSasl, KafkaSecurity, KafkaTls, SaslMechanism};
pub use spillway_shared::process::{HttpConfig, LogConfig, LogFormat};
pub use spillway_shared::settings::{ConfigErrors, EnvSource, ProcessEnv, Properties, Secret};
use spillway_shared::settings::{EnvPolicy, EnvVar, http_url_problem};

impl Config {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        spillway_shared::settings::parse_toml(text)
    }

    /// Loads the file (or defaults), applies the environment, reads password
    /// files, and validates ([`spillway_shared::settings::load`]).
    pub fn load(path: Option<&Path>, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
        spillway_shared::settings::load(path, env)
    }

    /// Reads every shard's `password_file` and the Kafka blocks' secret
    /// files.
    fn read_password_files(&mut self) -> Vec<String> {
        let mut errors = spillway_shared::kafka_security::read_files(
            &mut self.kafka.tls,
            &mut self.kafka.sasl,
            "kafka",
        );
        // A shard without its own `tls` takes `clickhouse.tls`; every
        // block's files are read now, so a bad certificate stops the start.
        for (i, shard) in self.clickhouse.shards.iter_mut().enumerate() {
            if shard.tls.is_none() && self.clickhouse.tls != ClickHouseTls::default() {
                shard.tls = Some(self.clickhouse.tls.clone());
            }
            if let Some(t) = &shard.tls
                && t.cert_file.is_some() == t.key_file.is_some()
                && let Err(e) = crate::tls::tls_config(t)
            {
                errors.push(format!("clickhouse.shards[{i}].tls: {e}"));
            }
        }
        for (i, shard) in self.clickhouse.shards.iter_mut().enumerate() {
            if let Some(file) = &shard.password_file {
                match std::fs::read_to_string(file) {
                    Ok(p) => shard.password = p.trim_end_matches(['\r', '\n']).to_owned().into(),
                    Err(e) => errors.push(format!(
                        "clickhouse.shards[{i}].password_file {}: {e}",
                        file.display()
                    )),
                }
            }
        }
        errors
    }

    /// Applies `SPILLWAY_INGESTER_*` overrides (the policy of
    /// [`spillway_shared::settings::EnvPolicy`]: an empty value is unset, an
    /// unknown `SPILLWAY_INGESTER_*` variable is an error, the old names
    /// work with a warning in [`Config::warnings`]).
    ///
    /// | variable | key | old name |
    /// |---|---|---|
    /// | `SPILLWAY_INGESTER_KAFKA_BROKERS` | `kafka.brokers` | `SPILLWAY_KAFKA_BROKERS` |
    /// | `SPILLWAY_INGESTER_TOPICS` | `kafka.topics` (comma-separated) | |
    /// | `SPILLWAY_INGESTER_GROUP_ID` | `kafka.group_id` | |
    /// | `SPILLWAY_INGESTER_CLICKHOUSE_URLS` | shards separated by `,`, a shard's replicas by `\|` | `SPILLWAY_CLICKHOUSE_URLS`, `SPILLWAY_CLICKHOUSE_URL` |
    /// | `SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER` | `clickhouse.cluster` | `SPILLWAY_CLICKHOUSE_CLUSTER` |
    /// | `SPILLWAY_INGESTER_CLICKHOUSE_DATABASE` | every shard's database | `SPILLWAY_CLICKHOUSE_DATABASE` |
    /// | `SPILLWAY_INGESTER_CLICKHOUSE_USER` | every shard's user | `SPILLWAY_CLICKHOUSE_USER` |
    /// | `SPILLWAY_INGESTER_CLICKHOUSE_PASSWORD` | every shard's password | `SPILLWAY_CLICKHOUSE_PASSWORD` |
    /// | `SPILLWAY_INGESTER_HTTP_LISTEN` | `http.listen` | |
    /// | `SPILLWAY_INGESTER_LOG_FORMAT` | `log.format` | |
    /// | `SPILLWAY_INGESTER_CONFIG` | the configuration file (`--config`) | |
    pub fn apply_env(&mut self, env: &dyn EnvSource) -> Vec<String> {
        let mut r = ENV.reader(env);
        if let Some(v) = r.get("SPILLWAY_INGESTER_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = r.get("SPILLWAY_INGESTER_TOPICS") {
            self.kafka.topics = v.split(',').map(|s| s.trim().to_owned()).collect();
        }
        if let Some(v) = r.get("SPILLWAY_INGESTER_GROUP_ID") {
            self.kafka.group_id = v;
        }
        if let Some(urls) = r.get("SPILLWAY_INGESTER_CLICKHOUSE_URLS") {
            let template = self.clickhouse.shards.first().cloned().unwrap_or_default();
            // Shards separated by `,`, a shard's replicas by `|`.
            self.clickhouse.shards = urls
                .split(',')
                .map(|shard| {
                    let mut urls: Vec<String> =
                        shard.split('|').map(|u| u.trim().to_owned()).collect();
                    let (url, replicas) = if urls.len() == 1 {
                        (urls.remove(0), Vec::new())
                    } else {
                        (DEFAULT_URL.to_owned(), urls)
                    };
                    ShardConfig {
                        url,
                        replicas,
                        ..template.clone()
                    }
                })
                .collect();
        }
        if let Some(v) = r.get("SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER") {
            self.clickhouse.cluster = Some(v);
        }
        let database = r.get("SPILLWAY_INGESTER_CLICKHOUSE_DATABASE");
        let user = r.get("SPILLWAY_INGESTER_CLICKHOUSE_USER");
        let password = r.get("SPILLWAY_INGESTER_CLICKHOUSE_PASSWORD");
        for shard in &mut self.clickhouse.shards {
            if let Some(v) = &database {
                shard.database.clone_from(v);
            }
            if let Some(v) = &user {
                shard.user.clone_from(v);
            }
            if let Some(v) = &password {
                shard.password = v.clone().into();
            }
        }
        let tls = &mut self.clickhouse.tls;
        for (name, slot) in [
            ("SPILLWAY_INGESTER_CLICKHOUSE_TLS_CA_FILE", &mut tls.ca_file),
            (
                "SPILLWAY_INGESTER_CLICKHOUSE_TLS_CERT_FILE",
                &mut tls.cert_file,
            ),
            (
                "SPILLWAY_INGESTER_CLICKHOUSE_TLS_KEY_FILE",
                &mut tls.key_file,
            ),
        ] {
            if let Some(v) = r.get(name) {
                *slot = Some(v.into());
            }
        }
        let mut problems = spillway_shared::kafka_security::apply_env(
            &mut self.kafka.tls,
            &mut self.kafka.sasl,
            &mut r,
            ENV.prefix,
        );
        if let Some(a) = r.parse("SPILLWAY_INGESTER_HTTP_LISTEN") {
            self.http.listen = Some(a);
        }
        if let Some(f) = r.parse("SPILLWAY_INGESTER_LOG_FORMAT") {
            self.log.format = f;
        }
        self.set_by_env = r.applied();
        let (errors, warnings) = r.finish();
        self.warnings = warnings;
        problems.extend(errors);
        problems
    }

    /// Checks every rule; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut e = Vec::new();
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            e.push("kafka.brokers must not be empty".to_owned());
        }
        if k.topics.is_empty() {
            e.push("kafka.topics must name at least one topic".to_owned());
        }
        for t in k.topics.iter().chain(std::iter::once(&k.dlq_topic())) {
            if !valid_topic(t) {
                e.push(format!(
                    "topic `{t}` is not a valid Kafka topic name ([A-Za-z0-9._-], 1 to 249)"
                ));
            }
        }
        if k.topics.contains(&k.dlq_topic()) {
            e.push("kafka.dead_letter_topic must differ from the consumed topics".to_owned());
        }
        if k.group_id.is_empty() {
            e.push("kafka.group_id must not be empty".to_owned());
        }
        if k.session_timeout < Duration::from_secs(1) {
            e.push("kafka.session_timeout must be at least 1s".to_owned());
        }
        if k.commit_interval.is_zero() {
            e.push("kafka.commit_interval must be above 0".to_owned());
        }
        for key in [
            "bootstrap.servers",
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
        ] {
            if k.properties.contains_key(key) {
                e.push(format!(
                    "kafka.properties.{key} is set by the ingester and cannot be overridden"
                ));
            }
        }
        e.extend(k.security().validate("kafka", &k.properties));
        if self.clickhouse.shards.is_empty() {
            e.push("clickhouse.shards must list at least one shard".to_owned());
        }
        e.extend(tls_problems(&self.clickhouse.tls, "clickhouse.tls"));
        for (i, s) in self.clickhouse.shards.iter().enumerate() {
            // A shard's own block; an inherited one is reported once, above.
            if let Some(t) = s.tls.as_ref().filter(|t| **t != self.clickhouse.tls) {
                e.extend(tls_problems(t, &format!("clickhouse.shards[{i}].tls")));
            }
        }
        for (i, s) in self.clickhouse.shards.iter().enumerate() {
            if s.replicas.is_empty() {
                e.extend(http_url_problem(
                    &format!("clickhouse.shards[{i}].url"),
                    &s.url,
                ));
            } else if s.url != DEFAULT_URL {
                e.push(format!(
                    "clickhouse.shards[{i}]: set `url` (one server) or `replicas` (a replicated \
                     shard), not both"
                ));
            }
            for (j, url) in s.replicas.iter().enumerate() {
                e.extend(http_url_problem(
                    &format!("clickhouse.shards[{i}].replicas[{j}]"),
                    url,
                ));
                if s.replicas[..j].contains(url) {
                    e.push(format!("clickhouse.shards[{i}].replicas lists {url} twice"));
                }
            }
            if s.database.is_empty()
                || !s
                    .database
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                e.push(format!(
                    "clickhouse.shards[{i}].database `{}` must be [A-Za-z0-9_]+",
                    s.database
                ));
            }
        }
        for (i, rule) in self.storage.precision.iter().enumerate() {
            if let Err(why) = rule.rounding() {
                e.push(format!("storage.precision[{i}]: {why}"));
            }
            if rule.metrics.is_empty() {
                e.push(format!(
                    "storage.precision[{i}].metrics must name at least one metric"
                ));
            }
            for m in &rule.metrics {
                if m.is_empty()
                    || m.trim_start_matches('*')
                        .trim_end_matches('*')
                        .contains('*')
                {
                    e.push(format!(
                        "storage.precision[{i}]: `{m}` must be a metric name, `prefix*` or `*suffix`"
                    ));
                }
            }
        }
        let b = &self.batch;
        if b.max_rows == 0 {
            e.push("batch.max_rows must be above 0".to_owned());
        }
        if b.max_bytes < 1024 {
            e.push("batch.max_bytes must be at least 1024".to_owned());
        }
        if b.max_age.is_zero() {
            e.push("batch.max_age must be above 0".to_owned());
        }
        let p = &self.pipeline;
        if p.memory_budget_bytes < 1024 * 1024 {
            e.push("pipeline.memory_budget_bytes must be at least 1 MiB".to_owned());
        }
        if p.insert_concurrency == 0 || p.insert_concurrency > 64 {
            e.push("pipeline.insert_concurrency must be between 1 and 64".to_owned());
        }
        if p.decode_threads == 0 || p.decode_threads > 64 {
            e.push("pipeline.decode_threads must be between 1 and 64".to_owned());
        }
        if p.rebalance_timeout < Duration::from_secs(1) {
            e.push("pipeline.rebalance_timeout must be at least 1s".to_owned());
        }
        if self.quality.interval < Duration::from_secs(1) {
            e.push("quality.interval must be at least 1s".to_owned());
        }
        if self.retention.check_interval < Duration::from_secs(1) {
            e.push("retention.check_interval must be at least 1s".to_owned());
        }
        if let Some(c) = &self.clickhouse.cluster
            && (c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            e.push(format!("clickhouse.cluster `{c}` must be [A-Za-z0-9_]+"));
        }
        if let Some(url) = &self.telemetry.otlp_endpoint {
            e.extend(http_url_problem("telemetry.otlp_endpoint", url));
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(e))
        }
    }
}

fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl spillway_shared::settings::Settings for Config {
    fn apply_env(&mut self, env: &dyn EnvSource) -> Vec<String> {
        Config::apply_env(self, env)
    }
    fn read_files(&mut self) -> Vec<String> {
        self.read_password_files()
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
    fn example_config_parses_and_validates() {
        let c = Config::from_toml(include_str!("../../config/ingester.example.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.clickhouse.shards.len(), 1);
        // The example spells out the defaults it documents.
        assert_eq!(c.storage, StorageConfig::default());
        assert_eq!(c.retention, RetentionConfig::default());
    }

    #[test]
    fn precision_rules_are_checked() {
        let c = Config::from_toml(
            r#"
            [kafka]
            brokers = "b"
            [[storage.precision]]
            metrics = ["a*b"]
            decimals = 2
            significant = 3
            "#,
        )
        .unwrap();
        let errors = c.validate().unwrap_err().to_string();
        assert!(
            errors.contains("storage.precision[0]: set exactly one"),
            "{errors}"
        );
        assert!(errors.contains("`a*b` must be a metric name"), "{errors}");
    }

    #[test]
    fn every_problem_is_reported() {
        let c = Config::from_toml(
            r#"
            [kafka]
            brokers = ""
            topics = []
            [[clickhouse.shards]]
            url = "127.0.0.1:8123"
            database = "bad-name"
            [pipeline]
            insert_concurrency = 0
            "#,
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        for needle in [
            "kafka.brokers",
            "kafka.topics",
            "shards[0].url",
            "shards[0].database",
            "insert_concurrency",
        ] {
            assert!(
                err.to_string().contains(needle),
                "missing {needle} in {err}"
            );
        }
    }

    #[test]
    fn environment_urls_make_one_shard_each() {
        let mut c = Config::default();
        let errors = c.apply_env(&[
            (
                "SPILLWAY_INGESTER_CLICKHOUSE_URLS",
                "http://a:1, http://b:2",
            ),
            ("SPILLWAY_INGESTER_CLICKHOUSE_DATABASE", "db1"),
        ]);
        assert_eq!((errors, c.warnings.clone()), (vec![], vec![]));
        let urls: Vec<&str> = c.clickhouse.shards.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["http://a:1", "http://b:2"]);
        assert!(c.clickhouse.shards.iter().all(|s| s.database == "db1"));
    }

    #[test]
    fn a_shard_of_replicas_from_the_file_or_the_environment() {
        let mut c = Config::default();
        let errors = c.apply_env(&[(
            "SPILLWAY_INGESTER_CLICKHOUSE_URLS",
            "http://a:1|http://a:2,http://b:1",
        )]);
        assert_eq!(errors, Vec::<String>::new());
        let urls: Vec<Vec<&str>> = c.clickhouse.shards.iter().map(ShardConfig::urls).collect();
        assert_eq!(urls, [vec!["http://a:1", "http://a:2"], vec!["http://b:1"]]);
        let servers: Vec<String> = c.clickhouse.shards[0]
            .servers()
            .into_iter()
            .map(|s| s.url)
            .collect();
        assert_eq!(servers, ["http://a:1", "http://a:2"]);
        assert!(c.validate().is_ok());

        let file = Config::from_toml(
            r#"
            [[clickhouse.shards]]
            replicas = ["https://r1:8443", "https://r2:8443"]
            "#,
        )
        .unwrap();
        assert_eq!(
            file.clickhouse.shards[0].urls(),
            ["https://r1:8443", "https://r2:8443"]
        );
        assert!(file.validate().is_ok());
    }

    #[test]
    fn replicas_and_url_together_or_a_replica_twice_are_refused() {
        let c = Config::from_toml(
            r#"
            [[clickhouse.shards]]
            url = "http://a:1"
            replicas = ["http://b:1", "http://b:1", "ftp://c"]
            "#,
        )
        .unwrap();
        let errors = c.validate().unwrap_err().to_string();
        assert!(
            errors.contains("set `url` (one server) or `replicas`"),
            "{errors}"
        );
        assert!(errors.contains("lists http://b:1 twice"), "{errors}");
        assert!(
            errors.contains("clickhouse.shards[0].replicas[2]"),
            "{errors}"
        );
    }

    #[test]
    fn old_variable_names_work_with_a_warning_and_typos_are_errors() {
        let mut c = Config::default();
        let errors = c.apply_env(&[
            ("SPILLWAY_CLICKHOUSE_URL", "http://a:1"),
            ("SPILLWAY_KAFKA_BROKERS", "k:9092"),
            ("SPILLWAY_INGESTER_LOG_FORMAT", ""),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(c.clickhouse.shards[0].url, "http://a:1");
        assert_eq!(c.kafka.brokers, "k:9092");
        assert_eq!(c.log.format, LogFormat::Text, "an empty value is unset");
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("use SPILLWAY_INGESTER_KAFKA_BROKERS"));

        let errors = Config::default().apply_env(&[("SPILLWAY_INGESTER_TOPIC", "t")]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("SPILLWAY_INGESTER_TOPIC: unknown variable"));
    }

    #[test]
    fn a_config_dump_shows_no_secret() {
        let mut c = Config::from_toml(
            r#"
            [kafka.properties]
            "sasl.username" = "alice"
            "sasl.password" = "kafka-secret"
            [[clickhouse.shards]]
            url = "http://a:1"
            password = "file-secret"
            "#,
        )
        .unwrap();
        let dump = format!("{c:?}");
        assert!(
            !dump.contains("file-secret") && !dump.contains("kafka-secret"),
            "{dump}"
        );
        c.apply_env(&[("SPILLWAY_INGESTER_CLICKHOUSE_PASSWORD", "env-secret")]);
        assert_eq!(c.clickhouse.shards[0].password.expose(), "env-secret");
        assert!(!format!("{c:?}").contains("env-secret"));
    }

    #[test]
    fn kafka_and_clickhouse_tls_come_from_the_environment_too() {
        let mut c = Config::default();
        let errors = c.apply_env(&[
            ("SPILLWAY_INGESTER_KAFKA_TLS_CA_FILE", "/ca.pem"),
            ("SPILLWAY_INGESTER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("SPILLWAY_INGESTER_KAFKA_SASL_USERNAME", "ingest"),
            ("SPILLWAY_INGESTER_CLICKHOUSE_TLS_CA_FILE", "/ch-ca.pem"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let props: std::collections::BTreeMap<_, _> =
            c.kafka.security().properties().into_iter().collect();
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-256");
        assert_eq!(props["sasl.username"], "ingest");
        assert_eq!(
            c.clickhouse.tls.ca_file.as_deref(),
            Some(Path::new("/ch-ca.pem"))
        );
        let mut c = Config::default();
        let errors = c.apply_env(&[
            ("SPILLWAY_INGESTER_KAFKA_SASL_USERNAME", "ingest"),
            ("SPILLWAY_INGESTER_KAFKA_SASL_MECHANISM", "GSSAPI"),
        ]);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
