//! deploy/kubernetes without a cluster: every container of every workload
//! gets its configuration the way the kubelet would give it (environment
//! from values, ConfigMap and Secret keys and the downward API; ConfigMap
//! files and Secret directories mounted where the pod mounts them), and the
//! real binary's `check-config` must accept it, once as shipped and once
//! with the TLS/SASL lines the config documents enabled. The schemas and the
//! references between objects are tests/kubernetes/validate.py.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_norway::Value;
use spillway_e2e::compose::repo;
use spillway_e2e::process::check_config;

/// `kubectl kustomize deploy/kubernetes`: the objects `kubectl apply -k` sends.
fn rendered() -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy/kubernetes"))
        .output()
        .context("kubectl (installed on these machines) is needed to render the kustomization")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn data_of(docs: &[Value], kind: &str, name: &str) -> Result<BTreeMap<String, String>> {
    let doc = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .with_context(|| format!("no {kind}/{name}"))?;
    let mut out = BTreeMap::new();
    for key in ["data", "stringData"] {
        if let Some(m) = doc[key].as_mapping() {
            for (k, v) in m {
                out.insert(
                    k.as_str().unwrap_or_default().to_owned(),
                    v.as_str().unwrap_or_default().to_owned(),
                );
            }
        }
    }
    Ok(out)
}

/// The TLS and SASL lines of a shipped config, enabled (what docs/install.md
/// tells a managed-Kafka user to do).
fn with_security_enabled(config: &str) -> String {
    config
        .lines()
        .map(|l| {
            let t = l.trim_start();
            let enabled = [
                "# [kafka.tls]",
                "# [kafka.sasl]",
                "# mechanism",
                "# username",
                "# password_file",
            ]
            .iter()
            .any(|p| t.starts_with(p));
            if enabled {
                t.trim_start_matches("# ").to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks one container; `secure` enables the config's TLS/SASL lines.
fn check_container(
    docs: &[Value],
    workload: &str,
    pod: &Value,
    container: &Value,
    secure: bool,
    scratch: &Path,
) -> Result<String> {
    let cname = container["name"].as_str().unwrap_or_default();
    let image = container["image"].as_str().unwrap_or_default();
    let bin = if image.contains("spillway-agent") {
        "spillway-agent"
    } else if image.contains("spillway-ingester") {
        "spillway-ingester"
    } else {
        bail!("{workload}/{cname}: image {image} is neither program");
    };
    let dir = scratch.join(format!("{workload}-{cname}-{secure}"));
    std::fs::create_dir_all(&dir)?;
    // Mounts: (source here, target in the container).
    let mut mounts = Vec::new();
    let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
    for m in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let target = m["mountPath"].as_str().context("mountPath")?.to_owned();
        let vname = m["name"].as_str().context("mount name")?;
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(vname))
            .with_context(|| format!("{workload}/{cname}: no volume {vname}"))?;
        let source = dir.join(vname);
        if let Some(cm) = v["configMap"]["name"].as_str() {
            let data = data_of(docs, "ConfigMap", cm)?;
            let key = m["subPath"]
                .as_str()
                .context("ConfigMaps are mounted by subPath here")?;
            let mut text = data
                .get(key)
                .with_context(|| format!("{cm} lacks {key}"))?
                .clone();
            if secure {
                text = with_security_enabled(&text);
            }
            std::fs::write(&source, text)?;
        } else if let Some(secret) = v["secret"]["secretName"].as_str() {
            std::fs::create_dir_all(&source)?;
            for (k, val) in data_of(docs, "Secret", secret)? {
                std::fs::write(source.join(k), val)?;
            }
        } else if let Some(host) = v["hostPath"]["path"].as_str() {
            if host == "/" {
                mounts.push(("".to_owned(), target));
                continue;
            }
            std::fs::create_dir_all(&source)?;
        } else {
            bail!("{workload}/{cname}: volume {vname} of a kind this test does not know");
        }
        mounts.push((source.to_string_lossy().into_owned(), target));
    }
    // The config files name mounted paths too (password_file, spool_dir).
    for (source, target) in mounts.clone() {
        if Path::new(&source).is_file() {
            let mut text = std::fs::read_to_string(&source)?;
            for (s, t) in &mounts {
                if !s.is_empty() {
                    text = text.replace(&format!("\"{t}"), &format!("\"{s}"));
                }
            }
            std::fs::write(&source, text)?;
            let _ = target;
        }
    }
    let mut env = BTreeMap::new();
    for e in container["env"].as_sequence().into_iter().flatten() {
        let key = e["name"].as_str().context("env name")?.to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_mapping() {
            let (n, k) = (
                r[&Value::from("name")].as_str(),
                r[&Value::from("key")].as_str(),
            );
            data_of(docs, "Secret", n.unwrap_or_default())?
                .get(k.unwrap_or_default())
                .cloned()
                .with_context(|| format!("{workload}/{cname} {key}: no such Secret key"))?
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_mapping() {
            let (n, k) = (
                r[&Value::from("name")].as_str(),
                r[&Value::from("key")].as_str(),
            );
            data_of(docs, "ConfigMap", n.unwrap_or_default())?
                .get(k.unwrap_or_default())
                .cloned()
                .with_context(|| format!("{workload}/{cname} {key}: no such ConfigMap key"))?
        } else if e["valueFrom"]["fieldRef"].is_mapping() {
            // The downward API: a node or pod name.
            "node-1.example".to_owned()
        } else {
            bail!("{workload}/{cname} {key}: a value this test cannot resolve");
        };
        env.insert(key, value);
    }
    ensure!(
        container["envFrom"].is_null(),
        "{workload}/{cname}: envFrom is not resolved by this test"
    );
    let (ok, out) = check_config(bin, &env, &mounts)?;
    ensure!(
        ok,
        "{workload}/{cname} ({}): {bin} check-config refuses what the pod gets:\n{out}",
        if secure {
            "TLS/SASL enabled"
        } else {
            "as shipped"
        }
    );
    Ok(format!("{workload}/{cname}"))
}

#[test]
fn every_container_gets_a_configuration_the_binaries_accept() -> Result<()> {
    let docs = rendered()?;
    let scratch = tempfile::tempdir()?;
    let mut checked = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !["Deployment", "DaemonSet", "Job"].contains(&kind) {
            continue;
        }
        let workload = doc["metadata"]["name"].as_str().unwrap_or_default();
        let pod = &doc["spec"]["template"]["spec"];
        for container in pod["containers"].as_sequence().into_iter().flatten() {
            for secure in [false, true] {
                checked.push(check_container(
                    &docs,
                    workload,
                    pod,
                    container,
                    secure,
                    scratch.path(),
                )?);
            }
        }
    }
    checked.dedup();
    ensure!(
        checked.len() == 3,
        "expected the agent, the ingester and migrate, checked {checked:?}"
    );
    Ok(())
}
