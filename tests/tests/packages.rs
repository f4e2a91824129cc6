//! The .deb and .rpm packages, installed as an operator installs them: on
//! this Debian machine the agent's .deb is installed, run as its own user
//! against a broker, upgraded while that broker is down, and purged; the
//! ingester's .deb is installed and purged; both .rpm files are inspected
//! with Debian's `rpm`. The packages are built by `scripts/package.sh` from
//! the debug binaries `cargo build --bins` made (a release build would add
//! minutes and package the same code).
//!
//! Needs root (dpkg), and changes this machine for its duration: it refuses
//! to run where a Spillway package is installed by somebody else.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use spillway_e2e::broker::{LocalBroker, free_port};
use spillway_e2e::consume::{TopicReader, tick_copies};
use spillway_e2e::ingest::{Ingesting, contiguous, repeated_ticks, start_ingesting, ticks};
use spillway_e2e::process::{Service, agent_metric};
use spillway_e2e::{TestEnv, unique_name};

const AGENT_CONFIG: &str = "/etc/spillway/agent.toml";
const SPOOL: &str = "/var/lib/spillway-agent/spool";
const UNIT_DIR: &str = "/usr/lib/systemd/system";
/// What an operator adds beside the package's config, and purge must keep.
const OPERATOR_FILE: &str = "/etc/spillway/kafka-ca.pem";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `program`, with none of the suite's SPILLWAY_* variables: an operator's
/// shell has none, and the programs read them.
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SPILLWAY_") {
            c.env_remove(key);
        }
    }
    c
}

/// Runs `program args`; its output, whether it succeeded.
fn run(program: &str, args: &[&str]) -> Result<(bool, String)> {
    let o = command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    Ok((o.status.success(), text(&o)))
}

/// Runs `program args`, which must succeed; its output.
fn ok(program: &str, args: &[&str]) -> Result<String> {
    let (success, out) = run(program, args)?;
    ensure!(success, "`{program} {}` failed:\n{out}", args.join(" "));
    Ok(out)
}

/// Builds the packages of revision `revision` into `out`.
fn package(out: &Path, revision: &str, only: &str, formats: &str) -> Result<Vec<PathBuf>> {
    let o = Command::new(repo().join("scripts/package.sh"))
        .env("PACKAGE_PROFILE", "dev")
        .env("PACKAGE_NO_BUILD", "1")
        .env("PACKAGE_FAST", "1")
        .env("PACKAGE_OUT", out)
        .env("PACKAGE_REVISION", revision)
        .env("PACKAGE_ONLY", only)
        .env("PACKAGE_FORMATS", formats)
        .stdin(Stdio::null())
        .output()
        .context("cannot run scripts/package.sh")?;
    ensure!(
        o.status.success(),
        "scripts/package.sh failed:\n{}",
        text(&o)
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    Ok(files)
}

fn find<'a>(files: &'a [PathBuf], prefix: &str, ext: &str) -> Result<&'a Path> {
    files
        .iter()
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(prefix) && name.ends_with(ext)
        })
        .map(PathBuf::as_path)
        .with_context(|| format!("no {prefix}*{ext} among {files:?}"))
}

/// The package's state as dpkg reports it ("" when unknown to dpkg).
fn dpkg_status(pkg: &str) -> String {
    match run(
        "dpkg-query",
        &["-W", "-f=${db:Status-Status} ${Version}", pkg],
    ) {
        Ok((true, s)) => s.trim().to_owned(),
        _ => String::new(),
    }
}

fn user_exists(name: &str) -> bool {
    run("getent", &["passwd", name]).is_ok_and(|(found, _)| found)
}

/// Mode and owner of a path, as `stat` prints them ("700 spillway:spillway").
fn mode_owner(path: &str) -> Result<String> {
    Ok(ok("stat", &["-c", "%a %U:%G", path])?.trim().to_owned())
}

/// One test at a time installs packages (dpkg's lock, one spillway user).
static DPKG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Refuses to run over a Spillway installation that is not this test's,
/// and removes what an earlier, interrupted run of it left.
fn clean_slate() -> Result<()> {
    ensure!(
        ok("id", &["-u"])?.trim() == "0",
        "the package test installs packages: it needs root (CI runs as root)"
    );
    for pkg in ["spillway-agent", "spillway-ingester"] {
        let status = dpkg_status(pkg);
        if status.is_empty() || status.starts_with("not-installed") {
            continue;
        }
        ensure!(
            status.ends_with("-test"),
            "{pkg} {status} is installed on this machine and is not this test's: not touching it"
        );
        ok("dpkg", &["--purge", pkg])?;
    }
    std::fs::remove_file(OPERATOR_FILE).ok();
    // Gone already when the packages took it with them.
    std::fs::remove_dir("/etc/spillway").ok();
    Ok(())
}

/// The packages' version for this test: the workspace's, marked as the
/// test's own so that `clean_slate` recognises it.
fn revision(n: u32) -> String {
    format!("{n}-test")
}

#[test]
fn the_changelog_names_the_workspace_version() -> Result<()> {
    let changelog = std::fs::read_to_string(repo().join("packaging/changelog"))?;
    let first = changelog.lines().next().unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    ensure!(
        first.starts_with(&format!("spillway ({version}-")),
        "packaging/changelog's newest entry is `{first}`, the workspace is {version}: add an entry"
    );
    Ok(())
}

#[test]
#[ignore = "needs root, dpkg, rpm and the local stack"]
fn the_rpm_packages_hold_what_they_install_and_say_what_they_need() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = package(dir.path(), "1", "spillway-agent spillway-ingester", "rpm")?;
    for program in ["spillway-agent", "spillway-ingester"] {
        let rpm = find(&files, &format!("{program}-0"), ".rpm")?;
        let rpm = rpm.to_str().context("path")?;
        let q = |args: &[&str]| -> Result<String> {
            let mut all = vec!["-qp"];
            all.extend_from_slice(args);
            all.push(rpm);
            ok("rpm", &all)
        };
        let config = format!("/etc/spillway/{}.toml", &program["spillway-".len()..]);
        let list = q(&["--list"])?;
        for path in [
            format!("/usr/bin/{program}"),
            format!("{UNIT_DIR}/{program}.service"),
            "/usr/lib/sysusers.d/spillway.conf".to_owned(),
            config.clone(),
        ] {
            ensure!(
                list.lines().any(|l| l == path),
                "{rpm} lacks {path}:\n{list}"
            );
        }
        // The config is %config(noreplace): an upgrade keeps an edited one.
        let flags = q(&["--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]"])?;
        ensure!(
            flags.lines().any(|l| l == format!("cn {config}")),
            "{config} is not %config(noreplace) in {rpm}:\n{flags}"
        );
        let scripts = q(&["--scripts"])?;
        for needed in [
            "postinstall scriptlet",
            "preuninstall scriptlet",
            "systemd-sysusers spillway.conf",
            "check-config",
            "try-restart",
        ] {
            ensure!(
                scripts.contains(needed),
                "{rpm}'s scripts lack `{needed}`:\n{scripts}"
            );
        }
        let requires = q(&["--requires"])?;
        for needed in ["libssl.so.3()(64bit)", "libc.so.6()(64bit)", "systemd"] {
            ensure!(
                requires.lines().any(|l| l.trim() == needed),
                "{rpm} does not require {needed}:\n{requires}"
            );
        }
        let version = q(&["--qf", "%{VERSION}-%{RELEASE}"])?;
        ensure!(
            version == format!("{}-1", env!("CARGO_PKG_VERSION")),
            "{rpm} is version {version}"
        );
    }
    Ok(())
}

/// Writes the operator's edit of the installed agent config: the broker,
/// the topic, a one-second tick, and its own HTTP port.
fn configure_agent(brokers: &str, topic: &str, host: &str, port: u16) -> Result<String> {
    let installed = std::fs::read_to_string(AGENT_CONFIG)?;
    let edited = installed
        .replace("brokers = \"\"", &format!("brokers = \"{brokers}\""))
        .replace(
            "topic = \"spillway.metrics\"",
            &format!("topic = \"{topic}\"\ndelivery_timeout = \"2s\""),
        )
        .replace("127.0.0.1:9465", &format!("127.0.0.1:{port}"))
        + &format!(
            "\n[agent]\ninterval = \"1s\"\nhost_id = \"{host}\"\nshutdown_timeout = \"3s\"\n\n\
             [collect]\ndisable = [\"processes\"]\n"
        );
    ensure!(
        edited != installed + "\n",
        "the installed config changed shape"
    );
    std::fs::write(AGENT_CONFIG, &edited)?;
    Ok(edited)
}

/// Waits until the agent on `port` has made ticks and ClickHouse holds all
/// of them but perhaps the last, then returns half-way between two ticks
/// (they are aligned to whole seconds), so that the broker is killed with
/// no tick in flight as a rule. A tick in flight when the broker dies can
/// be stored while its producer never hears back, spools it and sends it
/// again: a second copy the agent's at-least-once delivery allows
/// (ARCHITECTURE.md), not the package's; the test allows it on the topic.
async fn caught_up(
    env: &TestEnv,
    db: &str,
    host: &str,
    port: u16,
    logs: &dyn Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let made = agent_metric(port, "spillway_agent_ticks_total")
            .await
            .map_or(0, |v| v as u64);
        let t = ticks(env, db, &[host.to_owned()]).await?;
        if made >= 3
            && t.len() == 1
            && contiguous(&t)
            && t[0].distinct >= 3
            && t[0].distinct + 1 >= made
        {
            spillway_e2e::process::half_way_between_ticks().await?;
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the installed agent's ticks did not land: made {made}, stored {t:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs root, dpkg and the local stack"]
async fn the_agent_package_installs_runs_upgrades_with_the_broker_down_and_purges() -> Result<()> {
    let _dpkg = DPKG.lock().await;
    clean_slate()?;
    let dir = tempfile::tempdir()?;
    let first = package(
        &dir.path().join("r1"),
        &revision(1),
        "spillway-agent",
        "deb",
    )?;
    let second = package(
        &dir.path().join("r2"),
        &revision(2),
        "spillway-agent",
        "deb",
    )?;
    let deb1 = find(&first, "spillway-agent_", ".deb")?
        .to_str()
        .context("path")?
        .to_owned();
    let deb2 = find(&second, "spillway-agent_", ".deb")?
        .to_str()
        .context("path")?
        .to_owned();

    // Installed: the user, the spool, the unit and the config; not started,
    // because the config as installed names no broker.
    // A broker in the installing shell's environment does not count: the
    // unit will not see it.
    let o = command("dpkg")
        .env("SPILLWAY_AGENT_KAFKA_BROKERS", "kafka-1:9092")
        .args(["-i", &deb1])
        .stdin(Stdio::null())
        .output()?;
    let installed = text(&o);
    ensure!(o.status.success(), "dpkg -i {deb1}:\n{installed}");
    ensure!(
        installed.contains("spillway-agent: not started") && installed.contains("kafka.brokers"),
        "postinst did not say why the agent is not started:\n{installed}"
    );
    ensure!(user_exists("spillway"), "no spillway user after install");
    ensure!(
        mode_owner(SPOOL)? == "700 spillway:spillway",
        "{SPOOL}: {}",
        mode_owner(SPOOL)?
    );
    ensure!(
        mode_owner(AGENT_CONFIG)? == "640 root:spillway",
        "{AGENT_CONFIG}: {}",
        mode_owner(AGENT_CONFIG)?
    );
    let unit = format!("{UNIT_DIR}/spillway-agent.service");
    ensure!(Path::new(&unit).exists(), "{unit} not installed");
    ensure!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/spillway-agent.service").exists(),
        "the unit was enabled with no broker configured"
    );
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", "spillway-agent"])?;
    ensure!(
        conffiles.contains(AGENT_CONFIG),
        "not a conffile: {conffiles}"
    );
    // systemd's own check of the installed unit (its binary, user and
    // directives); it runs without systemd as PID 1.
    ok("systemd-analyze", &["verify", "--man=no", &unit])?;
    let (valid, out) = run(
        "/usr/bin/spillway-agent",
        &["--config", AGENT_CONFIG, "check-config"],
    )?;
    ensure!(
        !valid && out.contains("kafka.brokers must not be empty"),
        "the installed config should ask for a broker:\n{out}"
    );

    // Configured by hand and run as its user (systemd is not PID 1 here):
    // its ticks land through a broker of the test's own and the ingester.
    // A broker that keeps its log across the outage, as Kafka does (one
    // that came back empty would reuse offsets the ingester has journaled).
    let mut broker = LocalBroker::start_durable(&dir.path().join("broker"))?;
    let env = TestEnv {
        kafka_brokers: broker.brokers(),
        ..TestEnv::from_env()
    };
    let Ingesting {
        topic,
        db,
        mut ingester,
        ..
    } = start_ingesting(&env, dir.path(), "e2e_pkg", 1).await?;
    let host = unique_name("pkg");
    let port = free_port()?;
    let edited = configure_agent(&broker.brokers(), &topic, &host, port)?;
    let checked = ok(
        "setpriv",
        &[
            "--reuid=spillway",
            "--regid=spillway",
            "--init-groups",
            "--",
            "/usr/bin/spillway-agent",
            "--config",
            AGENT_CONFIG,
            "check-config",
        ],
    )?;
    ensure!(
        checked.contains("configuration is valid"),
        "check-config as spillway:\n{checked}"
    );
    let logs_dir = dir.path().join("agent");
    let mut agent = Service::installed_agent(
        &logs_dir,
        Path::new("/usr/bin/spillway-agent"),
        Path::new(AGENT_CONFIG),
        "spillway",
    )?;
    let logs = || format!("{}\n---\n{}", agent_log(&logs_dir), ingester.log());
    caught_up(&env, &db, &host, port, &logs).await?;

    // The broker goes away; the agent spools; the package is upgraded as a
    // fleet roll-out would (stop, install, start: what postinst's
    // try-restart does under systemd).
    broker.kill()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent_metric(port, "spillway_agent_spool_records")
        .await
        .unwrap_or(0.0)
        < 3.0
    {
        ensure!(
            Instant::now() < deadline,
            "the agent never spooled:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let made_before = agent_metric(port, "spillway_agent_ticks_total").await? as u64;
    ensure!(
        agent.terminate(Duration::from_secs(20))?,
        "the agent exited non-zero:\n{}",
        logs()
    );
    let segments = |p: &str| -> Result<Vec<(String, u64)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(p)? {
            let e = e?;
            v.push((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata()?.len(),
            ));
        }
        v.sort();
        Ok(v)
    };
    let spool_before = segments(SPOOL)?;
    ensure!(
        spool_before.iter().any(|(_, len)| *len > 0),
        "nothing in the spool after stopping with the broker down: {spool_before:?}"
    );
    let upgraded = ok("dpkg", &["-i", &deb2])?;
    ensure!(
        dpkg_status("spillway-agent").ends_with(&revision(2)),
        "not upgraded: {}\n{upgraded}",
        dpkg_status("spillway-agent")
    );
    ensure!(
        std::fs::read_to_string(AGENT_CONFIG)? == edited,
        "the upgrade changed the edited config:\n{upgraded}"
    );
    ensure!(
        segments(SPOOL)? == spool_before,
        "the upgrade touched the spool"
    );

    // The upgraded agent starts with the broker still down, then the broker
    // comes back: every tick of both instances lands, in order, once.
    agent.restart()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart()?;
    env.ensure_topic(&topic, 1).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let t = ticks(&env, &db, std::slice::from_ref(&host)).await?;
        let spooled = agent_metric(port, "spillway_agent_spool_records")
            .await
            .unwrap_or(1.0);
        if spooled == 0.0
            && t.len() == 2
            && contiguous(&t)
            && t.iter().any(|i| i.distinct >= made_before)
        {
            break t;
        }
        ensure!(
            Instant::now() < deadline,
            "the spool kept across the upgrade did not land: {t:?} (first instance made {made_before})\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The agent delivers at least once: a tick whose delivery timed out as
    // the broker went or came back is sent again, and may then be on the
    // topic twice. The pipeline adds no copy of its own: no tick is stored
    // more often than the topic holds it.
    let on_topic = {
        let mut reader = TopicReader::new(&broker.brokers(), &topic)?;
        let want: usize = stored.iter().map(|i| i.distinct as usize).sum();
        let all = reader
            .read_until(Duration::from_secs(60), |r| {
                tick_copies(r, &host).len() >= want
            })
            .await?;
        ensure!(all, "the topic lacks ticks ClickHouse holds");
        // And any later copies.
        reader.read_until(Duration::from_secs(3), |_| false).await?;
        tick_copies(&reader.records, &host)
    };
    let repeated = repeated_ticks(&env, &db, &host).await?;
    for (tick, copies) in &repeated {
        let sent = on_topic.get(tick).copied().unwrap_or(0);
        ensure!(
            *copies <= sent,
            "tick {tick:?} stored {copies} times, on the topic {sent} time(s): {stored:?}\n{}",
            logs()
        );
    }
    println!(
        "{} tick(s) sent twice by the agent, {} stored twice",
        on_topic.values().filter(|n| **n > 1).count(),
        repeated.len()
    );
    ensure!(
        agent.terminate(Duration::from_secs(20))?,
        "the agent exited non-zero"
    );
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "the ingester exited non-zero"
    );

    // Removed: the config and the spool stay. Purged: nothing of the
    // package is left, but the operator's own file stays.
    std::fs::write(OPERATOR_FILE, "operator's CA\n")?;
    ok("dpkg", &["--remove", "spillway-agent"])?;
    ensure!(
        Path::new(AGENT_CONFIG).exists() && Path::new(SPOOL).exists(),
        "remove took the config or the spool"
    );
    ensure!(
        !Path::new("/usr/bin/spillway-agent").exists(),
        "remove left the binary"
    );
    ok("dpkg", &["--purge", "spillway-agent"])?;
    for gone in [
        AGENT_CONFIG,
        "/var/lib/spillway-agent",
        "/usr/bin/spillway-agent",
        &unit,
        "/usr/lib/tmpfiles.d/spillway-agent.conf",
        "/usr/lib/sysusers.d/spillway.conf",
        "/usr/share/doc/spillway-agent",
    ] {
        ensure!(!Path::new(gone).exists(), "purge left {gone}");
    }
    ensure!(!user_exists("spillway"), "purge left the spillway user");
    ensure!(
        std::fs::read_to_string(OPERATOR_FILE)? == "operator's CA\n",
        "purge removed the operator's {OPERATOR_FILE}"
    );
    std::fs::remove_file(OPERATOR_FILE)?;
    std::fs::remove_dir("/etc/spillway")?;
    Ok(())
}

fn agent_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("spillway-agent.log")).unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs root and dpkg"]
async fn the_ingester_package_installs_checks_its_config_and_purges() -> Result<()> {
    let _dpkg = DPKG.lock().await;
    clean_slate()?;
    let dir = tempfile::tempdir()?;
    let files = package(dir.path(), &revision(1), "spillway-ingester", "deb")?;
    let deb = find(&files, "spillway-ingester_", ".deb")?
        .to_str()
        .context("path")?
        .to_owned();
    let installed = ok("dpkg", &["-i", &deb])?;
    ensure!(
        installed.contains("spillway-ingester: not started"),
        "postinst:\n{installed}"
    );
    let unit = format!("{UNIT_DIR}/spillway-ingester.service");
    ok("systemd-analyze", &["verify", "--man=no", &unit])?;
    let config = "/etc/spillway/ingester.toml";
    ensure!(
        mode_owner(config)? == "640 root:spillway",
        "{config}: {}",
        mode_owner(config)?
    );
    // The installed config, with the broker an operator would set (by the
    // environment here), passes the installed binary's check as its user.
    let o = command("setpriv")
        .args([
            "--reuid=spillway",
            "--regid=spillway",
            "--init-groups",
            "--",
            "/usr/bin/spillway-ingester",
            "--config",
            config,
            "check-config",
        ])
        .env("SPILLWAY_INGESTER_KAFKA_BROKERS", "kafka-1:9092")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        o.status.success(),
        "check-config of the installed ingester:\n{}",
        text(&o)
    );
    ok("dpkg", &["--purge", "spillway-ingester"])?;
    for gone in [config, "/usr/bin/spillway-ingester", &unit] {
        ensure!(!Path::new(gone).exists(), "purge left {gone}");
    }
    if user_exists("spillway") {
        bail!("purge left the spillway user");
    }
    // Gone already when the packages took it with them.
    std::fs::remove_dir("/etc/spillway").ok();
    Ok(())
}
