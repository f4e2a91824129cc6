//! A tansu broker owned by one test, for tests that stop and restart the
//! broker (which a shared broker cannot allow), or that need settings of
//! their own (an advertised TLS port, SASL).
//!
//! [`LocalBroker::start`] uses memory storage, so a restart comes back
//! empty, like a broker that lost its disk; its `tansu` binary comes from
//! `SPILLWAY_TANSU_BIN`, else `~/.cargo/bin` (where `scripts/stack.sh`
//! installs it), else `PATH`.
//!
//! [`LocalBroker::start_sasl`] runs tansu built with its `libsql` feature
//! (`SPILLWAY_TANSU_SASL_BIN`, installed by `scripts/stack.sh install`):
//! only a storage engine that keeps users can check SCRAM credentials (the
//! memory engine keeps none and answers every SCRAM client `unknown-user`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A broker process on a port of its own.
pub struct LocalBroker {
    bin: PathBuf,
    /// `--storage-engine`: memory, or an SQLite file in `dir`.
    storage: &'static str,
    /// Whether clients must authenticate (SASL/SCRAM).
    authentication: bool,
    /// The broker's working directory (its log, its SQLite file).
    dir: PathBuf,
    port: u16,
    /// The port it tells clients to connect to (its own, or a TLS
    /// terminator's in front of it).
    advertised: u16,
    child: Option<Child>,
}

/// A SCRAM user to create on a [`LocalBroker::start_sasl`] broker.
pub struct ScramUser<'a> {
    /// `scram256` or `scram512` (tansu's names).
    pub mechanism: &'a str,
    pub name: &'a str,
    pub password: &'a str,
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

/// tansu built with its `libsql` feature: the one with a storage engine
/// that keeps data across a restart (SQLite).
fn sasl_bin() -> Result<PathBuf> {
    std::env::var_os("SPILLWAY_TANSU_SASL_BIN")
        .map(PathBuf::from)
        .context(
            "SPILLWAY_TANSU_SASL_BIN is not set: run `scripts/stack.sh install` and export \
             what `scripts/stack.sh env` prints (tansu built with its libsql feature)",
        )
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start(log_dir: &std::path::Path) -> Result<LocalBroker> {
        let port = free_port()?;
        Self::start_advertising(log_dir, port, port)
    }

    /// Starts a broker on `port` that advertises `advertised` to clients
    /// (a TLS terminator's port: tansu 0.6.0 has no working TLS listener,
    /// and a client told the plaintext port would try TLS against it).
    pub fn start_advertising(
        log_dir: &std::path::Path,
        port: u16,
        advertised: u16,
    ) -> Result<LocalBroker> {
        let mut b = LocalBroker {
            bin: tansu_bin(),
            storage: "memory://tansu/",
            authentication: false,
            dir: log_dir.to_owned(),
            port,
            advertised,
            child: None,
        };
        b.restart()?;
        Ok(b)
    }

    /// Starts a broker that keeps its topics, records and committed
    /// offsets in an SQLite file in `dir` across a restart, as a Kafka
    /// broker keeps its log: an outage, not a lost disk.
    pub fn start_durable(dir: &std::path::Path) -> Result<LocalBroker> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        Self::start_sqlite(dir, port, port)
    }

    /// Starts tansu with its SQLite storage in `dir`, anyone may connect.
    fn start_sqlite(dir: &std::path::Path, port: u16, advertised: u16) -> Result<LocalBroker> {
        let mut b = LocalBroker {
            bin: sasl_bin()?,
            storage: "sqlite://tansu.db",
            authentication: false,
            dir: dir.to_owned(),
            port,
            advertised,
            child: None,
        };
        b.restart()?;
        Ok(b)
    }

    /// Starts a broker that keeps its data and users in an SQLite file in
    /// `dir`, creates `users` and `topics` (name, partitions) while anyone
    /// may connect, then restarts it requiring SASL/SCRAM of every client.
    pub fn start_sasl(
        dir: &std::path::Path,
        port: u16,
        advertised: u16,
        users: &[ScramUser<'_>],
        topics: &[(&str, i32)],
    ) -> Result<LocalBroker> {
        let mut b = Self::start_sqlite(dir, port, advertised)?;
        for u in users {
            b.cli(&[
                "user",
                "create",
                "--mechanism",
                u.mechanism,
                u.name,
                u.password,
            ])?;
        }
        for (name, partitions) in topics {
            b.create_topic(name, *partitions)?;
        }
        b.kill()?;
        b.authentication = true;
        b.restart()?;
        Ok(b)
    }

    /// Runs `tansu <args> --broker <this broker>` (its CLI; not once
    /// authentication is required: the CLI has no SASL).
    fn cli(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.bin)
            .args(args)
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .with_context(|| format!("cannot run tansu {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "tansu {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Creates a topic through the broker's own port (tansu's CLI).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.cli(&[
            "topic",
            "create",
            "--partitions",
            &partitions.to_string(),
            name,
        ])
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("tansu.log")
    }

    /// What the broker logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same port (empty with memory storage).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("broker already running");
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", self.storage])
        // tansu resolves an SQLite path against its working directory.
        .current_dir(&self.dir);
        if self.authentication {
            cmd.arg("--authentication");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install it with scripts/stack.sh install)",
                    self.bin.display()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "tansu did not listen on port {} within 20 s; see {}",
                    self.port,
                    self.log_path().display()
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

/// stunnel (Debian `stunnel4`) terminating TLS on a port of its own in front
/// of a plaintext port, with the server certificate and key in `tls_dir`
/// (`server.pem`, `server.key`); with `require_client_cert`, only clients
/// with a certificate signed by `tls_dir/ca.pem` get through (mutual TLS).
pub struct Stunnel {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Stunnel {
    /// Starts stunnel on `port`, forwarding to `target`.
    pub fn start(
        dir: &std::path::Path,
        tls_dir: &std::path::Path,
        port: u16,
        target: u16,
        require_client_cert: bool,
    ) -> Result<Stunnel> {
        let log = dir.join("stunnel.log");
        let conf = dir.join("stunnel.conf");
        let client_checks = if require_client_cert {
            format!(
                "verifyChain = yes\nrequireCert = yes\nCAfile = {}/ca.pem\n",
                tls_dir.display()
            )
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {log}\ndebug = notice\n[kafka]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:{target}\ncert = {tls}/server.pem\nkey = {tls}/server.key\n{client_checks}",
                log = log.display(),
                tls = tls_dir.display()
            ),
        )?;
        let child = Command::new("stunnel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start stunnel (apt-get install stunnel4)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "stunnel did not listen on port {port} within 20 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Stunnel {
            port,
            child: Some(child),
            log,
        })
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What stunnel logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Best effort on the way out of a test.
            let _killed = c.kill();
            let _waited = c.wait();
        }
    }
}
