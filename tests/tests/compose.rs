//! What can be checked of the Docker deployment without a Docker engine:
//! docker-compose.yml resolves (`docker-compose config`, which needs no
//! engine), every variable it sets for Spillway's containers is one the
//! binaries read (they reject unknown `SPILLWAY_AGENT_*` and
//! `SPILLWAY_INGESTER_*` variables, so the real binaries' `check-config`
//! is the judge), and Grafana is given exactly the files the suite tests.
//! Not checked here: that the images build and the stack runs (no engine on
//! this project's machines; docs/operations.md says so).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_norway::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker-compose config`: the file with anchors, merges and `env_file`s
/// resolved, as Compose would run it.
fn resolved_compose() -> Result<Value> {
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
fn environment(service: &Value) -> BTreeMap<String, String> {
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

/// Runs `bin check-config` with exactly `env` (plus PATH); a value naming a
/// file mounted into the container is pointed at the file in the repository.
fn check_config(
    bin: &str,
    env: &BTreeMap<String, String>,
    mounts: &[(String, String)],
) -> Result<(bool, String)> {
    let override_var = if bin == "spillway-agent" {
        "SPILLWAY_E2E_AGENT_BIN"
    } else {
        "SPILLWAY_E2E_INGESTER_BIN"
    };
    let path = spillway_e2e::process::bin_path(bin, override_var);
    let mut command = Command::new(&path);
    command.env_clear().arg("check-config");
    if let Ok(p) = std::env::var("PATH") {
        command.env("PATH", p);
    }
    for (k, v) in env {
        let local = mounts
            .iter()
            .find(|(_, target)| target == v)
            .map(|(source, _)| source.clone())
            .unwrap_or_else(|| v.clone());
        command.env(k, local);
    }
    let out = command
        .output()
        .with_context(|| format!("{}: run `cargo build --bins` first", path.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Bind mounts of a service as (source on this machine, target).
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let mut parts = v.as_str()?.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            source
                .starts_with('/')
                .then(|| (source.to_owned(), target.to_owned()))
        })
        .collect()
}

#[test]
fn every_variable_compose_sets_is_one_the_binaries_read() -> Result<()> {
    let compose = resolved_compose()?;
    let services = compose["services"]
        .as_mapping()
        .context("no services in docker-compose config")?;
    let mut checked = 0;
    for (name, service) in services {
        let image = service["image"].as_str().unwrap_or_default();
        let bin = if image.starts_with("spillway-agent") {
            "spillway-agent"
        } else if image.starts_with("spillway-ingester") {
            "spillway-ingester"
        } else {
            continue;
        };
        let name = name.as_str().unwrap_or("?");
        let env = environment(service);
        ensure!(!env.is_empty(), "service {name} sets no environment");
        let mounts = bind_mounts(service);
        let (ok, out) = check_config(bin, &env, &mounts)?;
        ensure!(
            ok && out.contains("configuration is valid") && !out.contains("deprecated"),
            "service {name}: {bin} check-config with {env:?}:\n{out}"
        );
        // The same check fails for a variable the binary does not read, so
        // a passing check means something.
        let mut typo = env.clone();
        let prefix = if bin == "spillway-agent" {
            "SPILLWAY_AGENT_"
        } else {
            "SPILLWAY_INGESTER_"
        };
        typo.insert(format!("{prefix}INTERVALL"), "1s".into());
        let (ok, out) = check_config(bin, &typo, &mounts)?;
        ensure!(
            !ok && out.contains("unknown variable"),
            "service {name}: an unknown variable passed:\n{out}"
        );
        println!("{name}: {bin} reads all {} variables", env.len());
        checked += 1;
    }
    ensure!(checked >= 3, "only {checked} Spillway services found");
    Ok(())
}

#[test]
fn the_images_default_environment_is_one_the_binaries_read() -> Result<()> {
    // `ENV K=V` of the ingester stage, with files the Dockerfile COPYs in.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let mut env = BTreeMap::new();
    let mut copies = Vec::new();
    for line in dockerfile.lines() {
        if let Some(kv) = line.strip_prefix("ENV ") {
            let (k, v) = kv.split_once('=').context("ENV without =")?;
            // Other programs' settings (MALLOC_ARENA_MAX for glibc) are not ours.
            if k.starts_with("SPILLWAY_") {
                env.insert(k.to_owned(), v.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("COPY ")
            && !rest.starts_with("--")
        {
            let mut parts = rest.split_whitespace();
            if let (Some(src), Some(dst)) = (parts.next(), parts.next()) {
                copies.push((repo().join(src).display().to_string(), dst.to_owned()));
            }
        }
    }
    ensure!(
        env.keys().all(|k| k.starts_with("SPILLWAY_INGESTER_")),
        "{env:?}"
    );
    let (ok, out) = check_config("spillway-ingester", &env, &copies)?;
    ensure!(ok, "spillway-ingester check-config with {env:?}:\n{out}");
    Ok(())
}

#[test]
fn grafana_is_given_only_what_the_suite_tests() -> Result<()> {
    let compose = resolved_compose()?;
    let grafana = &compose["services"]["grafana"];
    let mounts = bind_mounts(grafana);
    let deploy = repo().join("deploy/grafana").canonicalize()?;
    let mounted = |dir: &str| {
        mounts.iter().any(|(source, _)| {
            Path::new(source).canonicalize().ok() == deploy.join(dir).canonicalize().ok()
        })
    };
    // tests/tests/analytics.rs runs every dashboard in this folder and
    // tests/tests/alerts.rs every rule file in provisioning/alerting.
    ensure!(
        mounted("provisioning") && mounted("dashboards"),
        "grafana mounts {mounts:?}"
    );
    // Every threshold of alerting.env reaches Grafana.
    let env = environment(grafana);
    let text = std::fs::read_to_string(deploy.join("alerting.env"))?;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (k, v) = line.split_once('=').context("KEY=VALUE")?;
        ensure!(
            env.get(k).map(String::as_str) == Some(v),
            "grafana's environment lacks {k}={v}"
        );
    }
    Ok(())
}
