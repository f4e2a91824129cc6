//! OpenTelemetry export (OTLP over HTTP, protobuf) when
//! `telemetry.otlp_endpoint` is set: one span per batch INSERT, and the
//! main counters and gauges as metrics. Both SDK exporters run on their own
//! threads; the metrics are observable, read from [`Stats`] at each export.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::TelemetryConfig;
use crate::telemetry::Stats;

/// The running exporters.
pub struct Otlp {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
}

impl Otlp {
    /// The tracer for INSERT spans.
    pub fn tracer(&self) -> SdkTracer {
        self.traces.tracer("spillway-ingester")
    }

    /// Flushes and stops both exporters (blocking: call off the runtime).
    pub fn shutdown(self) {
        if let Err(e) = self.traces.shutdown() {
            tracing::warn!(error = %e, "OTLP trace export did not shut down cleanly");
        }
        if let Err(e) = self.metrics.shutdown() {
            tracing::warn!(error = %e, "OTLP metric export did not shut down cleanly");
        }
    }
}

/// Starts the export, or returns `None` when no endpoint is configured.
pub fn start(
    config: &TelemetryConfig,
    ingester_id: &str,
    stats: Arc<Stats>,
    interval: Duration,
) -> anyhow::Result<Option<Otlp>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    spillway_shared::process::install_tls_provider();
    let base = endpoint.trim_end_matches('/');
    let resource = spillway_shared::process::otlp_resource(
        "spillway-ingester",
        ingester_id,
        env!("CARGO_PKG_VERSION"),
        [],
    );
    let span_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{base}/v1/traces"))
        .build()
        .context("cannot build the OTLP span exporter")?;
    let traces = SdkTracerProvider::builder()
        .with_batch_exporter(span_exporter)
        .with_resource(resource.clone())
        .build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{base}/v1/metrics"))
        .build()
        .context("cannot build the OTLP metric exporter")?;
    let metrics = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(metric_exporter)
                .with_interval(interval)
                .build(),
        )
        .with_resource(resource)
        .build();
    let meter = metrics.meter("spillway-ingester");
    type Read = fn(&Stats) -> u64;
    let counters: [(&str, &str, Read); 8] = [
        ("spillway.ingester.records", "Records consumed", |s| {
            s.records_in.get()
        }),
        ("spillway.ingester.rows", "Rows decoded", |s| {
            s.rows_in.get()
        }),
        (
            "spillway.ingester.rows.inserted",
            "Rows inserted into ClickHouse",
            |s| s.rows_inserted_total.get(),
        ),
        (
            "spillway.ingester.decode_errors",
            "Records that failed to decode",
            |s| s.decode_errors.get(),
        ),
        (
            "spillway.ingester.dead_letters",
            "Records sent to the dead-letter topic",
            |s| s.dead_letters_total.get(),
        ),
        ("spillway.ingester.insert_retries", "INSERTs retried", |s| {
            s.insert_retries.get()
        }),
        ("spillway.ingester.seq_gaps", "Agent ticks skipped", |s| {
            s.seq_gaps.get()
        }),
        (
            "spillway.ingester.seq_duplicates",
            "Agent ticks made durable again",
            |s| s.seq_duplicates.get(),
        ),
    ];
    for (name, help, read) in counters {
        let stats = stats.clone();
        meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| o.observe(read(&stats), &[]))
            .build();
    }
    type ReadGauge = fn(&Stats) -> i64;
    let gauges: [(&str, &str, ReadGauge); 4] = [
        (
            "spillway.ingester.in_flight_bytes",
            "Bytes consumed, not yet durable",
            |s| s.in_flight_bytes.get(),
        ),
        (
            "spillway.ingester.consumption_paused",
            "1 while the memory budget pauses consumption",
            |s| s.consumption_paused.get(),
        ),
        (
            "spillway.ingester.assigned_partitions",
            "Partitions assigned",
            |s| s.assigned_partitions.get(),
        ),
        (
            "spillway.ingester.partitions_stalled",
            "Partitions paused on a schema problem (their rows rejected in a row)",
            |s| s.partitions_stalled.get(),
        ),
    ];
    for (name, help, read) in gauges {
        let stats = stats.clone();
        meter
            .i64_observable_gauge(name)
            .with_description(help)
            .with_callback(move |o| o.observe(read(&stats), &[]))
            .build();
    }
    Ok(Some(Otlp { traces, metrics }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Span as _, Tracer as _};

    /// Real OTLP/HTTP requests reach a local receiver: a span and the metrics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_spans_and_metrics_over_otlp_http() {
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

        let stats = Arc::new(Stats::new());
        stats.records_in.inc_by(7);
        let config = TelemetryConfig {
            otlp_endpoint: Some(format!("http://{addr}")),
        };
        let otlp = start(&config, "ing-test", stats, Duration::from_millis(200))
            .unwrap()
            .unwrap();
        let mut span = otlp.tracer().start("clickhouse.insert");
        span.set_attribute(KeyValue::new("spillway.rows", 5));
        span.end();
        let otlp = tokio::task::spawn_blocking(move || {
            otlp.traces.force_flush().unwrap();
            otlp
        })
        .await
        .unwrap();
        let mut paths = std::collections::BTreeMap::new();
        while paths.len() < 2 {
            let (path, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            paths.insert(path, String::from_utf8_lossy(&body).into_owned());
        }
        assert!(paths["/v1/traces"].contains("clickhouse.insert"));
        assert!(paths["/v1/traces"].contains("ing-test"));
        assert!(paths["/v1/metrics"].contains("spillway.ingester.records"));
        tokio::task::spawn_blocking(move || otlp.shutdown())
            .await
            .unwrap();
    }
}
