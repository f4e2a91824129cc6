//! Stored precision of gauges: a value is rounded to the resolution its
//! source has (CPU time in 100 Hz jiffies, a ratio of byte counts stored
//! exactly elsewhere, a duration from a clock) before it is stored, because
//! the digits past that are noise that defeats compression: on real agent
//! data the value column shrinks by about 40 % (`bench/storage.sh`).
//! Counters are never rounded.
//!
//! Rules come from `[[storage.precision]]` in the configuration; the first
//! rule with a pattern that matches the metric name applies. A pattern is a
//! name, `prefix*` or `*suffix`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use serde::Deserialize;

/// How a gauge is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// Stored as sent.
    #[default]
    Exact,
    /// To this many decimal places.
    Decimals(u8),
    /// To this many significant digits.
    Significant(u8),
}

impl Rounding {
    /// `value`, rounded. Zero, infinities and NaN are returned as they are.
    pub fn apply(self, value: f64) -> f64 {
        if value == 0.0 || !value.is_finite() {
            return value;
        }
        let places = match self {
            Rounding::Exact => return value,
            Rounding::Decimals(d) => i32::from(d),
            Rounding::Significant(k) => i32::from(k) - (value.abs().log10().floor() as i32 + 1),
        };
        let rounded = if places >= 0 {
            let scale = 10f64.powi(places);
            (value * scale).round() / scale
        } else {
            let scale = 10f64.powi(-places);
            (value / scale).round() * scale
        };
        // Past f64's range of exact scaling the value is kept.
        if rounded.is_finite() { rounded } else { value }
    }
}

/// One `[[storage.precision]]` rule as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionRule {
    /// Metric names or patterns (`prefix*`, `*suffix`).
    pub metrics: Vec<String>,
    /// Round to this many decimal places.
    pub decimals: Option<u8>,
    /// Round to this many significant digits.
    pub significant: Option<u8>,
}

impl PrecisionRule {
    fn new(metrics: &[&str], decimals: Option<u8>, significant: Option<u8>) -> PrecisionRule {
        PrecisionRule {
            metrics: metrics.iter().map(|m| (*m).to_owned()).collect(),
            decimals,
            significant,
        }
    }

    /// The rounding, or why the rule is invalid.
    pub fn rounding(&self) -> Result<Rounding, String> {
        match (self.decimals, self.significant) {
            (Some(d), None) if d <= 15 => Ok(Rounding::Decimals(d)),
            (None, Some(k)) if (1..=17).contains(&k) => Ok(Rounding::Significant(k)),
            (Some(_), Some(_)) | (None, None) => {
                Err("set exactly one of `decimals` or `significant`".into())
            }
            _ => Err("`decimals` must be 0..=15 and `significant` 1..=17".into()),
        }
    }
}

/// The default rules: what the agent's gauges can resolve (see
/// docs/metrics.md, "Stored precision").
pub fn default_rules() -> Vec<PrecisionRule> {
    vec![
        // Ratios of 100 Hz jiffies, and ratios of byte counts whose exact
        // counts are stored as their own metrics: 0.01 percentage points.
        PrecisionRule::new(
            &[
                "system.cpu.utilization",
                "process.cpu.utilization",
                "system.memory.utilization",
                "system.filesystem.utilization",
                "system.filesystem.inodes.utilization",
                "system.disk.utilization",
                "system.paging.utilization",
            ],
            Some(4),
            None,
        ),
        // Durations read from a clock: three significant digits (1 ms of a
        // second, 1 us of a millisecond).
        PrecisionRule::new(
            &[
                "spillway.agent.collection.duration",
                "spillway.agent.publish.latency",
                "system.disk.await",
            ],
            None,
            Some(3),
        ),
        // Rates derived from counters that are stored exactly.
        PrecisionRule::new(&["*.rate"], None, Some(4)),
        // /proc/uptime and /proc/loadavg have two decimals.
        PrecisionRule::new(
            &["system.uptime", "system.cpu.load_average.*"],
            Some(2),
            None,
        ),
    ]
}

/// The compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Precision {
    exact: HashMap<String, Rounding>,
    /// (pattern without `*`, is a prefix, rounding), in rule order.
    patterns: Vec<(String, bool, Rounding)>,
}

impl Precision {
    /// Compiles rules; invalid ones are reported by `config::validate`.
    pub fn new(rules: &[PrecisionRule]) -> Precision {
        let mut p = Precision::default();
        for rule in rules {
            let Ok(rounding) = rule.rounding() else {
                continue;
            };
            for m in &rule.metrics {
                if let Some(prefix) = m.strip_suffix('*') {
                    p.patterns.push((prefix.to_owned(), true, rounding));
                } else if let Some(suffix) = m.strip_prefix('*') {
                    p.patterns.push((suffix.to_owned(), false, rounding));
                } else {
                    p.exact.entry(m.clone()).or_insert(rounding);
                }
            }
        }
        p
    }

    /// The rounding of a gauge named `metric`.
    pub fn rule(&self, metric: &str) -> Rounding {
        if let Some(r) = self.exact.get(metric) {
            return *r;
        }
        self.patterns
            .iter()
            .find(|(p, prefix, _)| {
                if *prefix {
                    metric.starts_with(p.as_str())
                } else {
                    metric.ends_with(p.as_str())
                }
            })
            .map_or(Rounding::Exact, |(_, _, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(
            Rounding::Decimals(4).apply(0.268_656_716_417_910_45),
            0.2687
        );
        assert_eq!(Rounding::Decimals(0).apply(2.5), 3.0);
        assert_eq!(Rounding::Significant(3).apply(0.001_234_567), 0.001_23);
        assert_eq!(Rounding::Significant(4).apply(123_456.789), 123_500.0);
        assert_eq!(Rounding::Significant(4).apply(-0.098_765_4), -0.098_77);
        assert_eq!(Rounding::Significant(3).apply(0.0), 0.0);
        assert!(Rounding::Significant(3).apply(f64::NAN).is_nan());
        assert_eq!(Rounding::Exact.apply(0.1 + 0.2), 0.1 + 0.2);
        assert_eq!(Rounding::Decimals(4).apply(1e300), 1e300);
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = Precision::new(&default_rules());
        assert_eq!(p.rule("system.cpu.utilization"), Rounding::Decimals(4));
        assert_eq!(p.rule("system.network.io.rate"), Rounding::Significant(4));
        assert_eq!(p.rule("system.cpu.load_average.1m"), Rounding::Decimals(2));
        assert_eq!(p.rule("system.memory.usage"), Rounding::Exact);
        let p = Precision::new(&[
            PrecisionRule::new(&["a.*"], Some(1), None),
            PrecisionRule::new(&["a.b"], Some(2), None),
        ]);
        // Exact names are looked up first, then patterns in order.
        assert_eq!(p.rule("a.b"), Rounding::Decimals(2));
        assert_eq!(p.rule("a.c"), Rounding::Decimals(1));
    }

    #[test]
    fn invalid_rules_say_why() {
        assert!(
            PrecisionRule::new(&["x"], Some(1), Some(2))
                .rounding()
                .is_err()
        );
        assert!(PrecisionRule::new(&["x"], None, None).rounding().is_err());
        assert!(
            PrecisionRule::new(&["x"], None, Some(0))
                .rounding()
                .is_err()
        );
    }
}
