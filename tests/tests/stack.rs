//! The native stack's scripts as a newcomer meets them: what
//! `scripts/stack.sh env` exports is what the binaries read today.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use spillway_e2e::process::check_config;

/// `eval "$(scripts/stack.sh env)"` then `check-config`: each binary takes
/// the stack's addresses under its own current names, with no deprecation
/// warning, and says which variables set something. Every other variable
/// is one only the tests and benchmarks read (no binary's prefix).
#[test]
fn stack_env_prints_only_the_names_the_binaries_read() -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack.sh");
    let out = std::process::Command::new(&script).arg("env").output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut env = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let (key, value) = line
            .strip_prefix("export ")
            .and_then(|kv| kv.split_once('='))
            .with_context(|| format!("not an `export K=V` line: {line}"))?;
        env.insert(key.to_owned(), value.to_owned());
    }
    for (bin, prefix) in [
        ("spillway-agent", "SPILLWAY_AGENT_"),
        ("spillway-ingester", "SPILLWAY_INGESTER_"),
    ] {
        let (ok, output) = check_config(bin, &env, &[])?;
        ensure!(
            ok && !output.contains("warning"),
            "{bin} check-config with the stack's environment:\n{output}"
        );
        let ours: Vec<&str> = env
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with(prefix))
            .collect();
        ensure!(!ours.is_empty(), "the stack exports nothing for {bin}");
        let line = output
            .lines()
            .find(|l| l.starts_with("set by the environment"))
            .with_context(|| format!("{bin} does not say what the environment set:\n{output}"))?;
        for key in &ours {
            ensure!(line.contains(key), "{bin} does not name {key}: {line}");
        }
    }
    let foreign: Vec<&String> = env
        .keys()
        .filter(|k| {
            ![
                "SPILLWAY_AGENT_",
                "SPILLWAY_INGESTER_",
                "SPILLWAY_STACK_",
                "SPILLWAY_TANSU_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .collect();
    ensure!(
        foreign.is_empty(),
        "names no binary reads and not the stack's own: {foreign:?}"
    );
    Ok(())
}
