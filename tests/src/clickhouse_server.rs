//! ClickHouse servers owned by one test, for tests that stop and restart
//! ClickHouse (which a shared server cannot allow): one server, or a
//! cluster of shards and replicas. They use the native stack's config
//! template with ports of their own; data survives restarts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::broker::free_port;

/// A `clickhouse-server` process.
pub struct LocalClickHouse {
    dir: PathBuf,
    http_port: u16,
    child: Option<Child>,
}

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub tcp: u16,
    interserver: u16,
    https: u16,
}

impl Ports {
    /// Free ports on loopback.
    pub fn free() -> Result<Ports> {
        Ok(Ports {
            http: free_port()?,
            tcp: free_port()?,
            interserver: free_port()?,
            https: free_port()?,
        })
    }
}

impl LocalClickHouse {
    /// Starts a server with its data in `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Result<LocalClickHouse> {
        let ports = Ports::free()?;
        // A cluster of this one server; its own shard.
        let cluster = cluster_xml(&[vec![ports.tcp]]);
        let mut s = Self::configure(dir, ports, &format!("local-{}", ports.http), "r1", &cluster)?;
        s.restart()?;
        Ok(s)
    }

    /// Starts `shards` x `replicas` servers under `dir`, sharing the stack's
    /// ZooKeeper: each one's macros name its shard (unique to this call)
    /// and replica, and the `spillway` cluster lists them all with
    /// `internal_replication` (the Distributed tables read one replica of
    /// each shard). `servers[shard][replica]`.
    pub fn start_cluster(
        dir: &Path,
        shards: usize,
        replicas: usize,
    ) -> Result<Vec<Vec<LocalClickHouse>>> {
        let ports: Vec<Vec<Ports>> = (0..shards)
            .map(|_| (0..replicas).map(|_| Ports::free()).collect())
            .collect::<Result<_>>()?;
        let tcp: Vec<Vec<u16>> = ports
            .iter()
            .map(|shard| shard.iter().map(|p| p.tcp).collect())
            .collect();
        let cluster = cluster_xml(&tcp);
        let id = ports[0][0].http;
        let mut servers = Vec::new();
        for (s, shard) in ports.iter().enumerate() {
            let mut row = Vec::new();
            for (r, p) in shard.iter().enumerate() {
                let mut server = Self::configure(
                    &dir.join(format!("s{s}r{r}")),
                    *p,
                    &format!("cluster-{id}-{s}"),
                    &format!("r{r}"),
                    &cluster,
                )?;
                server.restart()?;
                row.push(server);
            }
            servers.push(row);
        }
        Ok(servers)
    }

    /// Writes a server's config (the native stack's template) in `dir`.
    fn configure(
        dir: &Path,
        ports: Ports,
        shard: &str,
        replica: &str,
        cluster: &str,
    ) -> Result<LocalClickHouse> {
        // The stack's test certificates (the template gives every server an
        // HTTPS port; this one's is unused).
        let tls_dir = std::env::var("SPILLWAY_STACK_TLS_DIR").unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.stack/tls")
                .display()
                .to_string()
        });
        // The stack's ZooKeeper; this server's tables get paths of their own.
        let zk_port =
            std::env::var("SPILLWAY_STACK_ZOOKEEPER_PORT").unwrap_or_else(|_| "12181".to_owned());
        for sub in ["log", "data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack");
        let template = std::fs::read_to_string(root.join("clickhouse-config.xml.in"))?;
        let config = template
            .replace("@DIR@", &dir.display().to_string())
            .replace("@HTTP_PORT@", &ports.http.to_string())
            .replace("@TCP_PORT@", &ports.tcp.to_string())
            .replace("@CLUSTER_SHARDS@", cluster)
            .replace("@INTERSERVER_PORT@", &ports.interserver.to_string())
            .replace("@ZK_PORT@", &zk_port)
            .replace("@SHARD@", shard)
            .replace("@REPLICA@", replica)
            .replace("@HTTPS_PORT@", &ports.https.to_string())
            .replace("@TLS_DIR@", &tls_dir)
            .replace("@VERIFICATION_MODE@", "none");
        let unfilled = config.split('@').skip(1).step_by(2).find(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        if let Some(name) = unfilled {
            anyhow::bail!(
                "clickhouse-config.xml.in has a placeholder this test does not fill: @{name}@"
            );
        }
        std::fs::write(dir.join("config.xml"), config)?;
        std::fs::copy(root.join("clickhouse-users.xml"), dir.join("users.xml"))?;
        Ok(LocalClickHouse {
            dir: dir.to_owned(),
            http_port: ports.http,
            child: None,
        })
    }

    /// The HTTP URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Starts the server again (same data, same ports).
    ///
    /// A replica killed while it wrote or fetched a part can hold a part
    /// ZooKeeper does not list; when such parts are more than half of its
    /// rows (a young table), ClickHouse refuses to load the table ("The
    /// local set of parts ... doesn't look like the set of parts in
    /// ZooKeeper") and the server exits. The part was never acknowledged on
    /// this replica (an INSERT's block is acknowledged once ZooKeeper lists
    /// it), so the operator's documented recovery is safe: create
    /// `flags/force_restore_data` and start again; the server detaches the
    /// part and fetches what ZooKeeper lists. This does that, once, and
    /// says so (docs/operations.md, "A replica that will not start").
    pub fn restart(&mut self) -> Result<()> {
        match self.start_once() {
            Err(e)
                if e.to_string()
                    .contains("doesn't look like the set of parts in ZooKeeper") =>
            {
                let flags = self.dir.join("data/flags");
                std::fs::create_dir_all(&flags)?;
                std::fs::write(flags.join("force_restore_data"), "")?;
                eprintln!(
                    "{}: refused its parts after a kill; started again with flags/force_restore_data",
                    self.dir.display()
                );
                self.start_once()
            }
            other => other,
        }
    }

    /// Starts the server and waits until it answers `/ping`.
    fn start_once(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("clickhouse already running");
        }
        let child = Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start clickhouse-server (install it with scripts/stack.sh install)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let ping = format!("127.0.0.1:{}", self.http_port);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&ping) {
                use std::io::{Read, Write};
                let mut out = String::new();
                if s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_ok()
                    && s.read_to_string(&mut out).is_ok()
                    && out.ends_with("Ok.\n")
                {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "clickhouse-server in {} exited ({status}) before it answered:\n{}",
                    self.dir.display(),
                    self.error_log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "clickhouse-server in {} did not answer within 60 s:\n{}",
                    self.dir.display(),
                    self.error_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's error log, for a failure's message
    /// (the test's directory is gone once it fails).
    fn error_log_tail(&self) -> String {
        let path = self.dir.join("log/clickhouse-server.err.log");
        match std::fs::read_to_string(&path) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Err(e) => format!("(no {}: {e})", path.display()),
        }
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

/// The `<shard>` elements of a cluster whose shards have replicas on these
/// TCP ports (one line: the stack's `sed` fills the same placeholder).
fn cluster_xml(shards: &[Vec<u16>]) -> String {
    shards
        .iter()
        .map(|replicas| {
            let replicas: String = replicas
                .iter()
                .map(|port| format!("<replica><host>127.0.0.1</host><port>{port}</port></replica>"))
                .collect();
            format!("<shard><internal_replication>true</internal_replication>{replicas}</shard>")
        })
        .collect()
}

impl Drop for LocalClickHouse {
    fn drop(&mut self) {
        let _killed = self.kill();
    }
}
