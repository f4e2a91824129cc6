//! A tansu broker owned by one test, for tests that stop and restart the
//! broker (which a shared broker cannot allow). It uses memory storage, so a
//! restart comes back empty, like a broker that lost its disk.
//!
//! The `tansu` binary comes from `SPILLWAY_TANSU_BIN`, else `PATH`, else
//! `~/.cargo/bin` (where `scripts/stack.sh` installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A broker process on a port of its own.
pub struct LocalBroker {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SPILLWAY_TANSU_BIN") {
        return p.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        PathBuf::from("tansu")
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start(log_dir: &std::path::Path) -> Result<LocalBroker> {
        let mut b = LocalBroker {
            port: free_port()?,
            child: None,
            log: log_dir.join("tansu.log"),
        };
        b.restart()?;
        Ok(b)
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same port (empty: memory storage).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("broker already running");
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install it with scripts/stack.sh install)",
                    tansu_bin().display()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "tansu did not listen on port {} within 20 s; see {}",
                    self.port,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        // Best effort on the way out of a test.
        let _killed = self.kill();
    }
}
