//! Prometheus text exposition → samples, for the `textfile` and `exec` inputs.
//!
//! Parsing is done by the `prometheus-parse` crate. Counters stay counters;
//! gauges and untyped values become gauges; histogram buckets become
//! `NAME_bucket{le}` counters and summary quantiles `NAME{quantile}` gauges.
//! Samples with a name or label key that the wire contract does not accept
//! are skipped and counted.

use prometheus_parse::{Scrape, Value};
use spillway_shared::codec::is_valid_name;
use spillway_shared::{Label, MetricKind, Sample};

use super::Samples;

/// How many samples were skipped because of their name or labels.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Skipped(pub(crate) u64);

/// Parses Prometheus text and appends its samples, each with `extra` labels.
pub(crate) fn parse_into(
    text: &str,
    extra: &[(&str, &str)],
    out: &mut Samples,
) -> Result<Skipped, std::io::Error> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    let mut skipped = Skipped::default();
    for s in scrape.samples {
        let mut labels: Vec<Label> = s
            .labels
            .iter()
            .map(|(k, v)| Label::new(k.as_str(), v.as_str()))
            .chain(extra.iter().map(|(k, v)| Label::new(*k, *v)))
            .collect();
        labels.sort();
        let mut push = |name: String, kind: MetricKind, value: f64, labels: Vec<Label>| {
            if is_valid_name(&name) && labels.iter().all(|l| is_valid_name(&l.key)) {
                out.push_sample(Sample {
                    name,
                    value,
                    kind,
                    unit: String::new(),
                    labels,
                });
            } else {
                skipped.0 += 1;
            }
        };
        match s.value {
            Value::Counter(v) => push(s.metric, MetricKind::Counter, v, labels),
            Value::Gauge(v) | Value::Untyped(v) => push(s.metric, MetricKind::Gauge, v, labels),
            Value::Histogram(buckets) => {
                for b in buckets {
                    let mut l = labels.clone();
                    l.push(Label::new("le", format_bound(b.less_than)));
                    l.sort();
                    push(
                        format!("{}_bucket", s.metric),
                        MetricKind::Counter,
                        b.count,
                        l,
                    );
                }
            }
            Value::Summary(quantiles) => {
                for q in quantiles {
                    let mut l = labels.clone();
                    l.push(Label::new("quantile", q.quantile.to_string()));
                    l.sort();
                    push(s.metric.clone(), MetricKind::Gauge, q.count, l);
                }
            }
        }
    }
    Ok(skipped)
}

fn format_bound(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".to_owned()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_gauges_histograms_and_skips_nan() {
        let text = "\
# TYPE jobs_done counter
jobs_done{queue=\"mail\"} 42
# TYPE queue_depth gauge
queue_depth 7
temperature NaN
# TYPE latency histogram
latency_bucket{le=\"0.1\"} 3
latency_bucket{le=\"+Inf\"} 5
latency_sum 0.7
latency_count 5
";
        let mut out = Samples::default();
        let skipped = parse_into(text, &[("source", "test")], &mut out).unwrap();
        assert_eq!(skipped, Skipped(0));
        assert_eq!(out.non_finite, 1);
        let v = out.into_vec();
        let jobs = v.iter().find(|s| s.name == "jobs_done").unwrap();
        assert_eq!(jobs.kind, MetricKind::Counter);
        assert_eq!(jobs.value, 42.0);
        assert_eq!(
            jobs.labels,
            vec![Label::new("queue", "mail"), Label::new("source", "test")]
        );
        assert!(v.iter().any(|s| s.name == "queue_depth" && s.value == 7.0));
        assert!(v.iter().any(|s| s.name == "latency_bucket"
            && s.labels.iter().any(|l| l.key == "le" && l.value == "+Inf")
            && s.value == 5.0));
    }
}
