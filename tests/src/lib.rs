//! Harness for Spillway's end-to-end tests, which run against a real Kafka
//! broker and real ClickHouse servers.
//!
//! The servers come from the environment, under the names the binaries read
//! (what `scripts/stack.sh env` prints), so the same tests run against the
//! native stack, Apache Kafka, or a current ClickHouse:
//!
//! | variable | default (the native stack) |
//! |---|---|
//! | `SPILLWAY_INGESTER_KAFKA_BROKERS` | `127.0.0.1:19092` |
//! | `SPILLWAY_INGESTER_CLICKHOUSE_URLS` | `http://127.0.0.1:18123` (shards separated by `,`; of a shard's replicas, `\|`-separated, the first) |
//! | `SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER` | none |
//! | `SPILLWAY_INGESTER_CLICKHOUSE_USER` / `_PASSWORD` | `default` / empty |
//!
//! The binaries the tests start never see these: each gets a configuration
//! file of its test's own ([`process::command_without_overrides`]).
//!
//! A server that cannot be reached fails the test with a message saying how to
//! start the stack; it never passes silently. Each test gets its own topic,
//! consumer group and database, named with [`unique_name`].

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};

const START_HINT: &str = "start the local stack with `scripts/stack.sh up` and export what \
                          `scripts/stack.sh env` prints, or point SPILLWAY_INGESTER_KAFKA_BROKERS / \
                          SPILLWAY_INGESTER_CLICKHOUSE_URLS at running servers";

/// Where the servers under test are.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// ClickHouse HTTP URLs, one per shard; the first is the default server.
    pub clickhouse_urls: Vec<String>,
    /// ClickHouse user.
    pub clickhouse_user: String,
    /// ClickHouse password.
    pub clickhouse_password: String,
    /// A cluster (in the servers' `remote_servers`) made of exactly the
    /// shards above, for the Distributed tables; the stack defines
    /// `spillway`. Without one, tests do not check Distributed tables.
    pub clickhouse_cluster: Option<String>,
    /// The control port of librdkafka's mock cluster when that is the
    /// broker (`examples/mock_broker.rs`): it creates the topics.
    pub kafka_control: Option<String>,
}

/// Asks the mock broker at `control` for topic `name`.
fn create_mock_topic(control: &str, name: &str, partitions: i32) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(control)
        .with_context(|| format!("mock broker control port {control}"))?;
    writeln!(stream, "{name} {partitions}")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.trim() != "ok" {
        bail!("mock broker: cannot create {name}: {}", answer.trim());
    }
    Ok(())
}

impl TestEnv {
    /// Reads the environment, falling back to the native stack's addresses.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let urls = var(
            "SPILLWAY_INGESTER_CLICKHOUSE_URLS",
            "http://127.0.0.1:18123",
        );
        TestEnv {
            kafka_brokers: var("SPILLWAY_INGESTER_KAFKA_BROKERS", "127.0.0.1:19092"),
            kafka_control: std::env::var("SPILLWAY_KAFKA_CONTROL")
                .ok()
                .filter(|v| !v.is_empty()),
            clickhouse_urls: urls
                .split(',')
                .map(|shard| shard.split('|').next().unwrap_or(shard).trim().to_owned())
                .collect(),
            clickhouse_user: var("SPILLWAY_INGESTER_CLICKHOUSE_USER", "default"),
            clickhouse_password: std::env::var("SPILLWAY_INGESTER_CLICKHOUSE_PASSWORD")
                .unwrap_or_default(),
            clickhouse_cluster: std::env::var("SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }

    /// The first ClickHouse server.
    pub fn clickhouse_url(&self) -> &str {
        &self.clickhouse_urls[0]
    }

    /// A librdkafka config for the test broker, with short timeouts.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka_brokers)
            .set("socket.timeout.ms", "10000")
            .set("message.timeout.ms", "30000")
            // A metadata request for a topic must not create it with the
            // broker's default partition count before CreateTopics lands
            // (librdkafka's producer-side clients, the admin among them,
            // ask for auto-creation by default).
            .set("allow.auto.create.topics", "false");
        c
    }

    /// Fails with a helpful message unless the broker answers a metadata request.
    pub fn require_kafka(&self) -> Result<()> {
        let producer: BaseProducer = self
            .kafka_config()
            .create()
            .context("cannot create a Kafka client")?;
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(drop)
            .with_context(|| {
                format!(
                    "Kafka broker at {} is not reachable: {START_HINT}",
                    self.kafka_brokers
                )
            })
    }

    /// Creates a topic with `partitions` partitions and waits until the
    /// broker reports it.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.require_kafka()?;
        if let Some(control) = &self.kafka_control {
            // librdkafka's mock cluster (examples/mock_broker.rs): topics
            // come from its control port, dead-letter topic included.
            create_mock_topic(control, name, partitions)?;
            if !name.ends_with(".dlq") {
                create_mock_topic(control, &format!("{name}.dlq"), 1)?;
            }
        } else {
            self.create_topic_with_admin(name, partitions).await?;
        }
        self.wait_for_topic(name, partitions).await
    }

    async fn create_topic_with_admin(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.kafka_config().create()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&topic], &opts).await?;
        for r in results {
            match r {
                Ok(_) => {}
                // The admin client retries a CreateTopics whose answer came
                // late; the first attempt made it. The metadata check below
                // still requires the partition count asked for.
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
            }
        }
        Ok(())
    }

    /// Waits until the broker reports `name` with `partitions` partitions.
    async fn wait_for_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.kafka_config().create()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let md = admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))?;
            if md
                .topics()
                .iter()
                .any(|t| t.name() == name && t.partitions().len() == partitions as usize)
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let seen: Vec<String> = md
                    .topics()
                    .iter()
                    .map(|t| {
                        format!(
                            "{} ({} partitions, {:?})",
                            t.name(),
                            t.partitions().len(),
                            t.error()
                        )
                    })
                    .collect();
                bail!("topic {name} did not appear within 15 s; the broker reports {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a topic for clients that may have had it auto-created first
    /// (an agent's producer asks a restarted broker for its topic's metadata,
    /// which creates it with the broker's default partition count): an
    /// existing topic is accepted with whatever partitions it has.
    pub async fn ensure_topic(&self, name: &str, partitions: i32) -> Result<()> {
        match self.create_topic(name, partitions).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let admin: AdminClient<DefaultClientContext> = self.kafka_config().create()?;
                let md = admin
                    .inner()
                    .fetch_metadata(Some(name), Duration::from_secs(5))?;
                let exists = md
                    .topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
                if exists { Ok(()) } else { Err(e) }
            }
        }
    }

    /// A ClickHouse client for server `shard` (0-based), no database selected.
    pub fn clickhouse(&self, shard: usize) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.clickhouse_urls[shard])
            .with_user(&self.clickhouse_user)
            .with_password(&self.clickhouse_password)
            // ClickHouse 18.16 lacks RowBinaryWithNamesAndTypes.
            .with_validation(false)
    }

    /// Fails with a helpful message unless ClickHouse server `shard` answers.
    pub async fn require_clickhouse(&self, shard: usize) -> Result<()> {
        let url = &self.clickhouse_urls[shard];
        tokio::time::timeout(
            Duration::from_secs(10),
            self.clickhouse(shard).query("SELECT 1").execute(),
        )
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("ClickHouse at {url} is not reachable: {START_HINT}"))
    }

    /// Creates a fresh database on server `shard` and returns a client bound to it.
    pub async fn fresh_database(&self, shard: usize, name: &str) -> Result<clickhouse::Client> {
        self.require_clickhouse(shard).await?;
        let client = self.clickhouse(shard);
        client
            .query(&format!("CREATE DATABASE IF NOT EXISTS {name}"))
            .execute()
            .await?;
        Ok(client.with_database(name))
    }
}

/// A name unique to this test run: `prefix` plus a random suffix, usable as a
/// topic, group or database name.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

pub mod broker;
pub mod clickhouse_server;
pub mod compose;
pub mod consume;
pub mod grafana;
pub mod ingest;
pub mod process;
pub mod sql;
pub mod verdict;

/// The text of a log line without its colour codes.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
