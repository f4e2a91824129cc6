//! A ClickHouse server owned by one test, for tests that stop and restart
//! ClickHouse (which a shared server cannot allow). It uses the native
//! stack's config template with ports of its own; data survives restarts.

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

impl LocalClickHouse {
    /// Starts a server with its data in `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Result<LocalClickHouse> {
        let (http_port, tcp_port, interserver_port, https_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
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
            .replace("@HTTP_PORT@", &http_port.to_string())
            .replace("@TCP_PORT@", &tcp_port.to_string())
            // A cluster of this one server: the template names two shards.
            .replace("@SHARD0_TCP_PORT@", &tcp_port.to_string())
            .replace("@SHARD1_TCP_PORT@", &tcp_port.to_string())
            .replace("@INTERSERVER_PORT@", &interserver_port.to_string())
            .replace("@ZK_PORT@", &zk_port)
            .replace("@SHARD@", &format!("local-{http_port}"))
            .replace("@HTTPS_PORT@", &https_port.to_string())
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
        let mut s = LocalClickHouse {
            dir: dir.to_owned(),
            http_port,
            child: None,
        };
        s.restart()?;
        Ok(s)
    }

    /// The HTTP URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Starts the server again (same data, same ports).
    pub fn restart(&mut self) -> Result<()> {
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
        let deadline = Instant::now() + Duration::from_secs(30);
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
            if Instant::now() > deadline {
                bail!(
                    "clickhouse-server did not answer within 30 s; see {}/log",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
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

impl Drop for LocalClickHouse {
    fn drop(&mut self) {
        let _killed = self.kill();
    }
}
