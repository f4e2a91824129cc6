//! Running the real `spillway-agent` binary as a child process.
//!
//! The binary is `SPILLWAY_AGENT_BIN`, else `target/debug/spillway-agent`
//! (build it first: `cargo build --bins`; `scripts/test.sh` does).

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

/// An agent process with its own config, spool and log files.
pub struct AgentProcess {
    child: Option<Child>,
    /// The directory holding its config, spool and log.
    pub dir: PathBuf,
}

impl AgentProcess {
    /// Writes `config` (TOML) into `dir` and starts the agent on it.
    pub fn start(dir: &Path, config: &str) -> Result<AgentProcess> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("agent.toml"), config)?;
        let mut a = AgentProcess {
            child: None,
            dir: dir.to_owned(),
        };
        a.restart()?;
        Ok(a)
    }

    /// Starts the agent again with the same config and spool.
    pub fn restart(&mut self) -> Result<()> {
        let bin = bin_path("spillway-agent", "SPILLWAY_AGENT_BIN");
        if !bin.exists() {
            bail!(
                "{} does not exist: run `cargo build --bins` first",
                bin.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let mut command = Command::new(&bin);
        // The config file alone decides: no SPILLWAY_* override leaks in from
        // the test's own environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SPILLWAY_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
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

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(false);
        };
        signal(c.id(), "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                c.kill()?;
                c.wait()?;
                bail!("agent did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
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

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _killed = self.kill9();
    }
}
