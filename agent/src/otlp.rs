//! OpenTelemetry export (OTLP over HTTP, protobuf) of the agent's own
//! metrics, when `telemetry.otlp_endpoint` is set. The instruments are
//! observable: the SDK's periodic reader (its own thread) reads
//! [`AgentStats`] at each export, so the hot paths pay nothing for it.

use std::sync::Arc;

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use spillway_shared::Origin;

use crate::config::TelemetryConfig;
use crate::telemetry::{AgentStats, process_usage};

/// Starts the export; keep the provider and call `shutdown` on exit.
pub fn start(
    config: &TelemetryConfig,
    origin: &Origin,
    stats: Arc<AgentStats>,
) -> anyhow::Result<Option<SdkMeterProvider>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    spillway_shared::process::install_tls_provider();
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/metrics", endpoint.trim_end_matches('/')))
        .build()
        .context("cannot build the OTLP exporter")?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(config.otlp_interval)
        .build();
    let resource = spillway_shared::process::otlp_resource(
        "spillway-agent",
        &origin.instance_id,
        &origin.agent_version,
        [
            KeyValue::new("host.id", origin.host_id.clone()),
            KeyValue::new("host.name", origin.hostname.clone()),
        ],
    );
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("spillway-agent");

    type Read = fn(&crate::telemetry::StatsSnapshot) -> u64;
    let counters: [(&str, &str, Read); 5] = [
        ("spillway.agent.ticks", "Collection ticks", |s| s.ticks),
        (
            "spillway.agent.records.published",
            "Records acknowledged by the broker",
            |s| s.published,
        ),
        (
            "spillway.agent.records.spooled",
            "Records written to the disk spool",
            |s| s.spooled,
        ),
        (
            "spillway.agent.records.dropped",
            "Records dropped at the spool cap",
            |s| s.dropped,
        ),
        (
            "spillway.agent.samples.non_finite",
            "Samples dropped for a NaN or infinite value",
            |s| s.non_finite,
        ),
    ];
    for (name, help, read) in counters {
        let stats = stats.clone();
        meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| o.observe(read(&stats.snapshot()), &[]))
            .build();
    }
    let gauges: [(&str, &str, &str, Read); 2] = [
        (
            "spillway.agent.spool.bytes",
            "Bytes in the disk spool",
            "By",
            |s| s.spool_bytes,
        ),
        (
            "spillway.agent.spool.records",
            "Records in the disk spool",
            "{record}",
            |s| s.spool_records,
        ),
    ];
    for (name, help, unit, read) in gauges {
        let stats = stats.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(help)
            .with_unit(unit)
            .with_callback(move |o| o.observe(read(&stats.snapshot()), &[]))
            .build();
    }
    meter
        .u64_observable_gauge("spillway.agent.memory.rss")
        .with_unit("By")
        .with_callback(|o| {
            if let Some(rss) = process_usage().rss_bytes {
                o.observe(rss, &[]);
            }
        })
        .build();
    meter
        .f64_observable_counter("spillway.agent.cpu.time")
        .with_unit("s")
        .with_callback(|o| {
            if let Some(cpu) = process_usage().cpu_seconds {
                o.observe(cpu, &[]);
            }
        })
        .build();
    Ok(Some(provider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A real OTLP/HTTP request reaches a local receiver with our metrics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_self_metrics_over_otlp_http() {
        use axum::body::Bytes;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(8);
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _sent = tx.send((uri.path().to_owned(), body)).await;
                ""
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let stats = Arc::new(AgentStats::default());
        stats.add_tick();
        let origin = Origin {
            host_id: "otlp-host".into(),
            hostname: "h".into(),
            instance_id: "i".into(),
            agent_version: "v".into(),
        };
        let config = TelemetryConfig {
            otlp_endpoint: Some(format!("http://{addr}")),
            otlp_interval: Duration::from_millis(200),
        };
        let provider = start(&config, &origin, stats).unwrap().unwrap();
        let (path, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(path, "/v1/metrics");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("spillway.agent.ticks"), "{text}");
        assert!(text.contains("otlp-host"));
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .unwrap();
    }
}
