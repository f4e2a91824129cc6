//! docker-compose.yml as Compose resolves it (`docker-compose config`, which
//! needs no engine): anchors, merges and `env_file`s applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_norway::Value;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker-compose config` of the repository's compose file.
pub fn resolved() -> Result<Value> {
    let out = Command::new("docker-compose")
        .current_dir(repo())
        .args(["-f", "docker-compose.yml", "config"])
        .output()
        .context(
            "docker-compose is not installed (apt-get install docker-compose; it needs no engine)",
        )?;
    ensure!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_norway::from_slice(&out.stdout)?)
}

/// A service's environment, as `NAME: value` pairs.
pub fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            Some((k.as_str()?.to_owned(), value))
        })
        .collect()
}
