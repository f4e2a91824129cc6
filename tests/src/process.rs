//! Running the real `spillway-agent` and `spillway-ingester` binaries as
//! child processes.
//!
//! The binaries are `SPILLWAY_E2E_AGENT_BIN` / `SPILLWAY_E2E_INGESTER_BIN`, else
//! `target/debug/...` (build them first: `cargo build --bins`;
//! `scripts/test.sh` does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the workspace's binaries are built.
pub fn bin_path(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join(name)
}

/// A command for `program` with none of the test's own `SPILLWAY_*`
/// variables (the stack's, which the binaries would take over their
/// configuration file): what it is given alone decides.
pub fn command_without_overrides(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SPILLWAY_") {
            command.env_remove(key);
        }
    }
    command
}

/// A Spillway process with its own config file and log in `dir`.
pub struct Service {
    child: Option<Child>,
    /// The directory holding its config, log (and the agent's spool).
    pub dir: PathBuf,
    name: &'static str,
    bin_env: &'static str,
    args: Vec<String>,
    /// Environment variables the process gets on top of the test's own.
    env: Vec<(String, String)>,
    /// An installed program run as another user, instead of the workspace's
    /// binary on `dir`'s config: (program, its config file, the user).
    installed: Option<(PathBuf, PathBuf, String)>,
}

/// The agent process.
pub type AgentProcess = Service;

impl Service {
    /// Writes `config` (TOML) into `dir` and starts the agent on it.
    pub fn start(dir: &Path, config: &str) -> Result<Service> {
        Service::agent_with_env(dir, config, &[])
    }

    /// Starts the agent with `env` added to its environment.
    pub fn agent_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Service> {
        let mut s = Service::new("spillway-agent", "SPILLWAY_E2E_AGENT_BIN", dir, config, &[])?;
        s.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s.restart()?;
        Ok(s)
    }

    /// Writes `config` into `dir` and starts the ingester on it with `args`
    /// (a subcommand, or nothing for `run`).
    pub fn ingester(dir: &Path, config: &str, args: &[&str]) -> Result<Service> {
        let mut s = Service::new(
            "spillway-ingester",
            "SPILLWAY_E2E_INGESTER_BIN",
            dir,
            config,
            args,
        )?;
        s.restart()?;
        Ok(s)
    }

    /// Writes the config file; the process is not started yet.
    fn new(
        name: &'static str,
        bin_env: &'static str,
        dir: &Path,
        config: &str,
        args: &[&str],
    ) -> Result<Service> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{name}.toml")), config)?;
        Ok(Service {
            child: None,
            dir: dir.to_owned(),
            name,
            bin_env,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            installed: None,
        })
    }

    /// Starts an installed agent (`program`, on `config`) as `user`, the way
    /// its systemd unit runs it (`setpriv` execs it, so the pid is the
    /// agent's); its log goes to `dir`.
    pub fn installed_agent(
        dir: &Path,
        program: &Path,
        config: &Path,
        user: &str,
    ) -> Result<Service> {
        std::fs::create_dir_all(dir)?;
        let mut s = Service {
            child: None,
            dir: dir.to_owned(),
            name: "spillway-agent",
            bin_env: "SPILLWAY_E2E_AGENT_BIN",
            args: vec!["run".to_owned()],
            env: vec![("MALLOC_ARENA_MAX".to_owned(), "1".to_owned())],
            installed: Some((program.to_owned(), config.to_owned(), user.to_owned())),
        };
        s.restart()?;
        Ok(s)
    }

    /// Starts the process again with the same config (and spool).
    pub fn restart(&mut self) -> Result<()> {
        let (bin, config) = match &self.installed {
            Some((program, config, _)) => (program.clone(), config.clone()),
            None => (
                bin_path(self.name, self.bin_env),
                self.dir.join(format!("{}.toml", self.name)),
            ),
        };
        if !bin.exists() {
            bail!(
                "{} does not exist: run `cargo build --bins` first",
                bin.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.name)))?;
        // The config file alone decides.
        let mut command = match &self.installed {
            Some((_, _, user)) => {
                let mut c = command_without_overrides("setpriv");
                c.args([
                    &format!("--reuid={user}"),
                    &format!("--regid={user}"),
                    "--init-groups",
                    "--",
                ])
                .arg(&bin);
                c
            }
            None => command_without_overrides(&bin),
        };
        let child = command
            .arg("--config")
            .arg(config)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("SPILLWAY_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Replaces the config file (for a reload test).
    pub fn write_config(&self, config: &str) -> Result<()> {
        std::fs::write(self.dir.join(format!("{}.toml", self.name)), config)?;
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself; returns
    /// whether it exited 0.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(false);
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                c.kill()?;
                c.wait()?;
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> Result<bool> {
        let Some(pid) = self.pid() else {
            return Ok(false);
        };
        signal(pid, "TERM")?;
        self.wait(timeout)
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}

/// Sends a signal by name with kill(1).
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

impl Drop for Service {
    fn drop(&mut self) {
        let _killed = self.kill9();
    }
}

/// A free loopback port (bound once, then released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The HTTP status of `GET path` on a loopback port, or `None` when nothing
/// answers. Plain HTTP/1.0 over a socket: enough for `/ready` and `/metrics`.
/// The status `/ready` answers on `port`, if it answers.
pub fn ready(port: u16) -> Option<u16> {
    http_get(port, "/ready").map(|(status, _)| status)
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Some((status, body))
}

/// An agent's config for tests: 1 s interval, status every 2 s, short
/// delivery and shutdown timeouts, a spool in `spool`, plus `extra` TOML.
pub fn agent_config(
    brokers: &str,
    topic: &str,
    host_id: &str,
    spool: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        r#"
[agent]
interval = "1s"
host_id = "{host_id}"
status_interval = "2s"
shutdown_timeout = "3s"

[kafka]
brokers = "{brokers}"
topic = "{topic}"
delivery_timeout = "2s"

[buffer]
spool_dir = "{spool}"

[log]
level = "info"
{extra}
"#,
        spool = spool.display()
    )
}

/// A value from the `/metrics` of the agent or the ingester on `port`.
pub async fn agent_metric(port: u16, name: &str) -> Result<f64> {
    let body = tokio::task::spawn_blocking(move || -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .await??;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .with_context(|| format!("{name} not in /metrics"))
}

/// Runs `bin check-config` with exactly `env` (plus PATH), as a container
/// would: a value naming a path mounted into the container, or a path under
/// it, is pointed at the mount's source here (`mounts`: source, target).
pub fn check_config(
    bin: &str,
    env: &std::collections::BTreeMap<String, String>,
    mounts: &[(String, String)],
) -> Result<(bool, String)> {
    let override_var = if bin == "spillway-agent" {
        "SPILLWAY_E2E_AGENT_BIN"
    } else {
        "SPILLWAY_E2E_INGESTER_BIN"
    };
    let path = bin_path(bin, override_var);
    let mut command = Command::new(&path);
    command.env_clear().arg("check-config");
    if let Ok(p) = std::env::var("PATH") {
        command.env("PATH", p);
    }
    for (k, v) in env {
        let local = mounts
            .iter()
            .find_map(|(source, target)| {
                let rest = v.strip_prefix(target.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then(|| format!("{source}{rest}"))
            })
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

/// Sleeps until the middle of the next second: half-way between two ticks
/// of an agent with a 1 s interval (ticks are aligned to whole seconds).
pub async fn half_way_between_ticks() -> Result<()> {
    let into_second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(
        (1500 - into_second) % 1000,
    )))
    .await;
    Ok(())
}
