//! Creating topics that must exist (the dead-letter topic, loadgen's topic).

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

/// Creates `name` with `partitions` partitions unless it exists already.
/// A topic that exists is left alone, so a pre-created topic works where the
/// ingester may not create topics (or the broker cannot: librdkafka's mock
/// cluster has no CreateTopics).
pub async fn ensure_topic(base: &ClientConfig, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        base.create().context("cannot create admin client")?;
    if exists(base, name).await {
        return Ok(());
    }
    // Bounded: an unreachable broker at start-up is an error within 15 s,
    // not a hang.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin.create_topics([&topic], &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("cannot create topic {t}: {code}"),
        }
    }
    Ok(())
}

/// Whether the broker reports `name` with partitions (false when it cannot
/// be asked: creating it then says why).
async fn exists(base: &ClientConfig, name: &str) -> bool {
    let mut config = base.clone();
    // Asking must not create it with the broker's default partition count.
    config.set("allow.auto.create.topics", "false");
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::producer::BaseProducer = config.create().ok()?;
        let md = rdkafka::producer::Producer::client(&client)
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .ok()?;
        Some(
            md.topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty()),
        )
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}
