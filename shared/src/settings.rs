//! Configuration plumbing shared by the agent and the ingester: reading a
//! TOML file, the injectable environment, and the error that lists every
//! problem at once. (No Kafka or ClickHouse here; each binary owns its keys.)

use std::path::Path;

use serde::de::DeserializeOwned;

/// A source of environment variables, injectable so tests never touch the
/// process environment.
pub trait EnvSource {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed list of variables, for tests.
impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Every problem found while loading or validating a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Parses TOML text into `T`.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    toml::from_str(text).map_err(|e| ConfigErrors(vec![e.to_string().trim().to_owned()]))
}

/// Reads and parses a TOML file; the defaults when `path` is `None`. Errors
/// name the file.
pub fn read_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigErrors> {
    let Some(p) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(p).map_err(|e| {
        ConfigErrors(vec![format!(
            "cannot read config file {}: {e}",
            p.display()
        )])
    })?;
    parse_toml(&text).map_err(|e| {
        ConfigErrors(
            e.0.into_iter()
                .map(|m| format!("{}: {m}", p.display()))
                .collect(),
        )
    })
}
