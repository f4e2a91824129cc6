//! What can be checked of the Docker deployment without a Docker engine:
//! docker-compose.yml resolves (`docker-compose config`, which needs no
//! engine), every variable it sets for Spillway's containers is one the
//! binaries read (they reject unknown `SPILLWAY_AGENT_*` and
//! `SPILLWAY_INGESTER_*` variables, so the real binaries' `check-config`
//! is the judge), and Grafana is given exactly the files the suite tests.
//! Not checked here: that the images build and the stack runs (no engine on
//! this project's machines; docs/operations.md says so).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_norway::Value;

use spillway_e2e::compose::{environment, repo, resolved as resolved_compose};
use spillway_e2e::process::check_config;

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
    // Per stage of the Dockerfile: `ENV K=V`, the files it COPYs in, and
    // the port its HEALTHCHECK asks.
    #[derive(Default)]
    struct Stage {
        env: BTreeMap<String, String>,
        copies: Vec<(String, String)>,
        health_port: Option<String>,
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let mut stages: BTreeMap<String, Stage> = BTreeMap::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        if let Some(from) = line.strip_prefix("FROM ") {
            current = from.rsplit(" AS ").next().unwrap_or_default().to_owned();
        }
        let stage = stages.entry(current.clone()).or_default();
        if let Some(kv) = line.strip_prefix("ENV ") {
            let (k, v) = kv.split_once('=').context("ENV without =")?;
            // Other programs' settings (MALLOC_ARENA_MAX for glibc) are not ours.
            if k.starts_with("SPILLWAY_") {
                stage.env.insert(k.to_owned(), v.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("COPY ")
            && !rest.starts_with("--")
        {
            let mut parts = rest.split_whitespace();
            if let (Some(src), Some(dst)) = (parts.next(), parts.next()) {
                stage
                    .copies
                    .push((repo().join(src).display().to_string(), dst.to_owned()));
            }
        } else if let Some(rest) = line.trim().strip_prefix("CMD [\"bash\"")
            && let Some(after) = rest.split("/dev/tcp/127.0.0.1/").nth(1)
        {
            stage.health_port = Some(after.chars().take_while(char::is_ascii_digit).collect());
        }
    }
    for (name, program) in [
        ("agent", "spillway-agent"),
        ("ingester", "spillway-ingester"),
    ] {
        let stage = stages
            .get(name)
            .with_context(|| format!("no `{name}` stage"))?;
        let prefix = format!("{}_", program.to_uppercase().replace('-', "_"));
        ensure!(
            stage.env.keys().all(|k| k.starts_with(&prefix)),
            "the {name} image sets another program's variables: {:?}",
            stage.env
        );
        let (ok, out) = check_config(program, &stage.env, &stage.copies)?;
        ensure!(ok, "{program} check-config with {:?}:\n{out}", stage.env);
        // The HEALTHCHECK asks the port the image's program listens on.
        let listen = stage
            .env
            .get(&format!("{prefix}HTTP_LISTEN"))
            .with_context(|| format!("the {name} image sets no {prefix}HTTP_LISTEN"))?;
        let port = stage.health_port.as_deref().unwrap_or("none");
        ensure!(
            listen.ends_with(&format!(":{port}")),
            "the {name} image's HEALTHCHECK asks port {port}, the program listens on {listen}"
        );
    }
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
    // Every variable of alerting.env reaches Grafana.
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

/// What the images do with the services as written: two services building
/// one tag can race ("image already exists"), so one builds and the others
/// run it without pulling; Grafana starts after the migrations; the
/// webhook's host resolves inside Grafana's container, where `localhost` is
/// Grafana itself.
#[test]
fn services_build_once_start_in_order_and_reach_the_webhook() -> Result<()> {
    let compose = resolved_compose()?;
    let services = compose["services"].as_mapping().context("no services")?;
    let mut builders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or("?").to_owned();
        let image = service["image"].as_str().unwrap_or_default();
        if image.contains(":local") {
            if service.get("build").is_some() {
                builders.entry(image.to_owned()).or_default().push(name);
            } else {
                ensure!(
                    service["pull_policy"] == "never",
                    "{name} runs the local image {image} but may try to pull it"
                );
            }
        }
    }
    for (image, names) in &builders {
        ensure!(names.len() == 1, "{image} is built by {names:?}");
    }
    let locals: Vec<&str> = services
        .values()
        .filter_map(|s| s["image"].as_str())
        .filter(|i| i.contains(":local"))
        .collect();
    for image in locals {
        ensure!(builders.contains_key(image), "no service builds {image}");
    }

    let grafana = &compose["services"]["grafana"];
    ensure!(
        grafana["depends_on"]["migrate"]["condition"] == "service_completed_successfully",
        "grafana does not wait for the migrations: {:?}",
        grafana["depends_on"]
    );
    let url = environment(grafana)
        .get("SPILLWAY_ALERT_WEBHOOK_URL")
        .cloned()
        .context("grafana has no SPILLWAY_ALERT_WEBHOOK_URL")?;
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or_default();
    ensure!(
        !["localhost", "127.0.0.1", "::1", ""].contains(&host),
        "the webhook {url} is Grafana's own container"
    );
    if host == "host.docker.internal" {
        let mapped = grafana["extra_hosts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|h| h.as_str() == Some("host.docker.internal:host-gateway"));
        ensure!(
            mapped,
            "host.docker.internal is not mapped for grafana on Linux"
        );
    } else {
        ensure!(
            services.keys().any(|k| k.as_str() == Some(host)),
            "the webhook host {host} is neither a service nor the Docker host"
        );
    }
    Ok(())
}

/// Grafana reads ClickHouse as a user of its own that can only read: the
/// data source's user is defined in a users.d file mounted into the
/// ClickHouse service, with a read-only profile and SELECT-only grants.
#[test]
fn grafana_reads_clickhouse_as_a_read_only_user() -> Result<()> {
    let compose = resolved_compose()?;
    let ds: Value = serde_norway::from_str(&std::fs::read_to_string(
        repo().join("deploy/grafana/provisioning/datasources/clickhouse.yaml"),
    )?)?;
    let user = ds["datasources"][0]["jsonData"]["username"]
        .as_str()
        .context("data source without username")?
        .to_owned();
    let admin = environment(&compose["services"]["clickhouse"])
        .get("CLICKHOUSE_USER")
        .cloned()
        .unwrap_or_default();
    ensure!(user != admin, "Grafana uses the administrator {admin}");
    let mounts = bind_mounts(&compose["services"]["clickhouse"]);
    let (file, _) = mounts
        .iter()
        .find(|(_, target)| target.starts_with("/etc/clickhouse-server/users.d/"))
        .context("no users.d file mounted into clickhouse")?;
    let xml = std::fs::read_to_string(file)?;
    ensure!(
        xml.contains(&format!("<{user}>")),
        "{file} does not define {user}"
    );
    ensure!(
        xml.contains("<readonly>1</readonly>"),
        "{file}: no read-only profile"
    );
    for grant in xml.split("<query>").skip(1) {
        let grant = grant.split("</query>").next().unwrap_or_default();
        let rights = grant
            .trim_start_matches("GRANT ")
            .split(" ON ")
            .next()
            .unwrap_or_default();
        ensure!(
            rights
                .split(',')
                .all(|r| ["SELECT", "SHOW TABLES", "SHOW COLUMNS"].contains(&r.trim())),
            "{user} is granted more than reading: {grant}"
        );
    }
    Ok(())
}
