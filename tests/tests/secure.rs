//! Secure connections against real servers: Kafka over TLS and mutual TLS
//! (stunnel, Debian's, terminating TLS in front of a tansu broker of the
//! test's own that advertises stunnel's port: tansu 0.6.0 has no working
//! TLS listener), SASL/SCRAM over TLS against a tansu that checks
//! credentials (built with its libsql feature: SCRAM needs a storage engine
//! that keeps users), and ClickHouse 18.16 over HTTPS, with and without a
//! required client certificate (the stack's servers: scripts/stack.sh gives
//! server 1 an HTTPS port that checks no client certificate and server 2
//! one that requires a certificate signed by the stack's test CA).
//!
//! The certificates are the stack's (`SPILLWAY_STACK_TLS_DIR`, from
//! `scripts/stack.sh env`): a CA, a server certificate for localhost and
//! 127.0.0.1, a client certificate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rdkafka::producer::{BaseProducer, Producer};
use spillway_e2e::broker::{LocalBroker, ScramUser, Stunnel, free_port};
use spillway_e2e::ingest::{ingester_config, loadgen_args, wait_rows};
use spillway_e2e::process::{Service, agent_config};
use spillway_e2e::{TestEnv, unique_name};

/// The stack's test certificates.
fn tls_dir() -> Result<PathBuf> {
    let dir = std::env::var("SPILLWAY_STACK_TLS_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .context("SPILLWAY_STACK_TLS_DIR is not set: export what `scripts/stack.sh env` prints")?;
    ensure!(
        dir.join("client.pem").exists(),
        "no test certificates in {}",
        dir.display()
    );
    Ok(dir)
}

/// `[kafka.tls]` with the test CA and, for mutual TLS, the client certificate.
fn kafka_tls(tls: &std::path::Path, client_cert: bool) -> String {
    let mut s = format!("\n[kafka.tls]\nca_file = \"{}/ca.pem\"\n", tls.display());
    if client_cert {
        s += &format!(
            "cert_file = \"{0}/client.pem\"\nkey_file = \"{0}/client.key\"\n",
            tls.display()
        );
    }
    s
}

/// A tansu broker of the test's own behind stunnel (TLS; mutual TLS with
/// `require_client_cert`), a topic and its dead-letter topic on it, and the
/// environment with its TLS address.
struct TlsBroker {
    _broker: LocalBroker,
    stunnel: Stunnel,
    topic: String,
    env: TestEnv,
}

fn tls_broker(
    env: &TestEnv,
    dir: &std::path::Path,
    tls: &std::path::Path,
    prefix: &str,
    partitions: i32,
    require_client_cert: bool,
) -> Result<TlsBroker> {
    let (plain, secure) = (free_port()?, free_port()?);
    let broker = LocalBroker::start_advertising(dir, plain, secure)?;
    let stunnel = Stunnel::start(dir, tls, secure, plain, require_client_cert)?;
    let topic = unique_name(prefix);
    broker.create_topic(&topic, partitions)?;
    broker.create_topic(&format!("{topic}.dlq"), 1)?;
    let env = TestEnv {
        kafka_brokers: stunnel.brokers(),
        ..env.clone()
    };
    Ok(TlsBroker {
        _broker: broker,
        stunnel,
        topic,
        env,
    })
}

/// Runs `spillway-ingester <args>` with `config` to the end.
fn run_ingester(dir: &std::path::Path, config: &str, args: &[&str]) -> Result<(bool, String)> {
    let mut s = Service::ingester(dir, config, args)?;
    let ok = s.wait(Duration::from_secs(120))?;
    Ok((ok, s.log()))
}

/// Migrates a database of its own, starts the ingester on `secure_env`'s
/// broker with `security` (its `[kafka.tls]`/`[kafka.sasl]` blocks), runs
/// `loadgen` with the same settings and waits for every one of its rows:
/// the running ingester and its database.
async fn ingest_through(
    env: &TestEnv,
    secure_env: &TestEnv,
    dir: &std::path::Path,
    topic: &str,
    security: &str,
    logs: impl Fn() -> String,
) -> Result<(Service, String)> {
    let (group, db) = (unique_name("g"), unique_name("e2e_secure"));
    spillway_e2e::ingest::migrate(env, dir, topic, &db)?;
    let config = |group: &str, db: &str| ingester_config(secure_env, topic, group, db) + security;
    let ingester = Service::ingester(&dir.join("ingester"), &config(&group, &db), &[])?;
    let (hosts, ticks) = (4u64, 25u64);
    let args = loadgen_args(topic, "secure", hosts, ticks);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, log) = run_ingester(&dir.join("loadgen"), &config("loadgen", "unused"), &args)?;
    ensure!(ok, "loadgen failed:\n{log}\n{}", logs());
    wait_rows(
        env,
        &db,
        hosts * ticks * 40,
        Duration::from_secs(90),
        || format!("{}\n{}", ingester.log(), logs()),
    )
    .await?;
    Ok((ingester, db))
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn kafka_over_mutual_tls_carries_every_record_and_refuses_a_client_without_a_certificate()
-> Result<()> {
    let env = TestEnv::from_env();
    let tls = tls_dir()?;
    let dir = tempfile::tempdir()?;
    let TlsBroker {
        _broker,
        stunnel,
        topic,
        env: tls_env,
    } = tls_broker(&env, dir.path(), &tls, "e2e_tls", 2, true)?;

    // A client with the CA but no certificate of its own is turned away.
    let refused: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stunnel.brokers())
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", tls.join("ca.pem").display().to_string())
        .create()?;
    ensure!(
        refused
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err(),
        "a client without a certificate got metadata through mutual TLS"
    );

    let (mut ingester, db) = ingest_through(
        &env,
        &tls_env,
        dir.path(),
        &topic,
        &kafka_tls(&tls, true),
        || format!("stunnel:\n{}", stunnel.log()),
    )
    .await?;

    // The agent over mutual TLS: its ticks land too.
    let host = unique_name("tls-agent");
    let mut agent = Service::start(
        &dir.path().join("agent"),
        &agent_config(
            &stunnel.brokers(),
            &topic,
            &host,
            &dir.path().join("spool"),
            &kafka_tls(&tls, true),
        ),
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ticks, _) = agent_ticks(&env, &db, &host).await?;
        if ticks >= 3 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{ticks} agent ticks after 60 s:\n{}\n{}",
            agent.log(),
            stunnel.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(
        agent.terminate(Duration::from_secs(15))?,
        "agent exited non-zero:\n{}",
        agent.log()
    );
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    Ok(())
}

/// Ingester configuration with the stack's HTTPS URLs instead of its HTTP ones.
fn https_config(
    env: &TestEnv,
    topic: &str,
    group: &str,
    db: &str,
    tls_block: &str,
) -> Result<String> {
    let urls = std::env::var("SPILLWAY_STACK_CLICKHOUSE_HTTPS_URLS")
        .context("SPILLWAY_STACK_CLICKHOUSE_HTTPS_URLS is not set: export what `scripts/stack.sh env` prints")?;
    let https: Vec<String> = urls.split(',').map(str::to_owned).collect();
    ensure!(
        https.len() == env.clickhouse_urls.len(),
        "{urls} is not one HTTPS URL per shard"
    );
    let https_env = TestEnv {
        clickhouse_urls: https,
        ..env.clone()
    };
    Ok(ingester_config(&https_env, topic, group, db) + tls_block)
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn clickhouse_over_https_with_a_ca_file_and_a_client_certificate() -> Result<()> {
    let env = TestEnv::from_env();
    let tls = tls_dir()?;
    let dir = tempfile::tempdir()?;
    let (topic, group, db) = (
        unique_name("e2e_https"),
        unique_name("g"),
        unique_name("e2e_https"),
    );
    env.create_topic(&topic, 2).await?;
    let full = format!(
        "\n[clickhouse.tls]\nca_file = \"{0}/ca.pem\"\ncert_file = \"{0}/client.pem\"\nkey_file = \"{0}/client.key\"\n",
        tls.display()
    );
    let ca_only = format!(
        "\n[clickhouse.tls]\nca_file = \"{}/ca.pem\"\n",
        tls.display()
    );

    // The server that requires a client certificate refuses a client
    // without one; without the CA the server's certificate is unknown.
    let (ok, log) = run_ingester(
        &dir.path().join("no-cert"),
        &https_config(&env, &topic, &group, &db, &ca_only)?,
        &["migrate"],
    )?;
    ensure!(
        !ok && log.contains("shard https://127.0.0.1"),
        "migrate without a client certificate:\n{log}"
    );
    let (ok, log) = run_ingester(
        &dir.path().join("no-ca"),
        &https_config(&env, &topic, &group, &db, "")?,
        &["migrate"],
    )?;
    ensure!(
        !ok && log.to_lowercase().contains("certificate"),
        "migrate without the CA:\n{log}"
    );

    let config = https_config(&env, &topic, &group, &db, &full)?;
    let (ok, log) = run_ingester(&dir.path().join("migrate"), &config, &["migrate"])?;
    ensure!(ok, "migrate over HTTPS failed:\n{log}");
    let mut ingester = Service::ingester(&dir.path().join("ingester"), &config, &[])?;
    let rows = spillway_e2e::ingest::loadgen(&env, dir.path(), &topic, "https", 4, 25)?;
    wait_rows(&env, &db, rows, Duration::from_secs(90), || ingester.log()).await?;
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    Ok(())
}

/// A CA that signed nothing the broker shows.
fn wrong_ca(dir: &std::path::Path) -> Result<PathBuf> {
    let pem = dir.join("wrong-ca.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not the broker's CA", "-keyout"])
        .arg(dir.join("wrong-ca.key"))
        .arg("-out")
        .arg(&pem)
        .output()
        .context("cannot run openssl")?;
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(pem)
}

/// The rows of `host`'s ticks: (distinct ticks, highest tick + 1).
async fn agent_ticks(env: &TestEnv, db: &str, host: &str) -> Result<(u64, u64)> {
    Ok(env
        .clickhouse(0)
        .with_database(db)
        .query(
            "SELECT uniqExact(seq), toUInt64(max(seq) + 1) FROM samples_all \
             WHERE host_id = ? AND metric = 'system.uptime'",
        )
        .bind(host)
        .fetch_one()
        .await?)
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn an_agent_with_the_wrong_ca_spools_then_delivers_every_tick_after_sighup() -> Result<()> {
    let env = TestEnv::from_env();
    let tls = tls_dir()?;
    let dir = tempfile::tempdir()?;
    let TlsBroker {
        _broker,
        stunnel,
        topic,
        env: tls_env,
    } = tls_broker(&env, dir.path(), &tls, "e2e_rotate", 1, false)?;
    let (group, db) = (unique_name("g"), unique_name("e2e_rotate"));
    spillway_e2e::ingest::migrate(&env, dir.path(), &topic, &db)?;
    let mut ingester = Service::ingester(
        &dir.path().join("ingester"),
        &(ingester_config(&tls_env, &topic, &group, &db) + &kafka_tls(&tls, false)),
        &[],
    )?;

    let host = unique_name("rotate");
    let port = free_port()?;
    let config = |ca: &std::path::Path| {
        agent_config(
            &stunnel.brokers(),
            &topic,
            &host,
            &dir.path().join("spool"),
            &format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[collect]\ndisable = [\"processes\"]\n\
                 [kafka.tls]\nca_file = \"{}\"\n",
                ca.display()
            ),
        )
    };
    let wrong = wrong_ca(dir.path())?;
    let mut agent = Service::start(&dir.path().join("agent"), &config(&wrong))?;
    // It cannot verify the broker: its ticks go to the spool.
    let refused = Refused {
        env: &env,
        db: &db,
        host: &host,
        port,
    };
    refused.spools(&agent, "certificate verify failed").await?;

    // The right CA and SIGHUP: the spool drains, every tick arrives once.
    agent.write_config(&config(&tls.join("ca.pem")))?;
    spillway_e2e::process::signal(agent.pid().context("agent not running")?, "HUP")?;
    refused.delivers_every_tick(&agent, &ingester).await?;
    ensure!(
        agent.terminate(Duration::from_secs(15))?,
        "agent exited non-zero"
    );
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    Ok(())
}

/// An agent (its metrics on `port`) the broker turns away, until it is fixed.
struct Refused<'a> {
    env: &'a TestEnv,
    db: &'a str,
    host: &'a str,
    port: u16,
}

impl Refused<'_> {
    /// Waits until the agent has spooled three ticks, and checks that its
    /// log says `why` and that none of its ticks was stored.
    async fn spools(&self, agent: &Service, why: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while spillway_e2e::process::agent_metric(self.port, "spillway_agent_spool_records")
            .await
            .unwrap_or(0.0)
            < 3.0
        {
            ensure!(
                std::time::Instant::now() < deadline,
                "nothing spooled in 60 s:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ensure!(
            agent.log().contains(why),
            "the agent's log does not say why it cannot deliver ({why}):\n{}",
            agent.log()
        );
        ensure!(
            agent_ticks(self.env, self.db, self.host).await?.0 == 0,
            "a tick got through the broker that refuses the agent"
        );
        Ok(())
    }

    /// Waits until every tick the agent made (at least six) is stored, and
    /// checks that none is missing.
    async fn delivers_every_tick(&self, agent: &Service, ingester: &Service) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let made = spillway_e2e::process::agent_metric(self.port, "spillway_agent_ticks_total")
                .await?;
            let (distinct, next) = agent_ticks(self.env, self.db, self.host).await?;
            if distinct >= made as u64 && distinct > 5 {
                ensure!(
                    distinct == next,
                    "{distinct} ticks stored, but seq reaches {next}: some were lost"
                );
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{distinct} of {made} ticks stored 90 s after the fix:\n{}\n{}",
                agent.log(),
                ingester.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `[kafka.sasl]` with a password file.
fn kafka_sasl(mechanism: &str, username: &str, password_file: &std::path::Path) -> String {
    format!(
        "\n[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"{username}\"\npassword_file = \"{}\"\n",
        password_file.display()
    )
}

#[tokio::test]
#[ignore = "needs the local stack and tansu built with libsql (scripts/stack.sh install)"]
async fn sasl_scram_over_tls_carries_every_record_and_a_wrong_password_spools_until_fixed()
-> Result<()> {
    let env = TestEnv::from_env();
    let tls = tls_dir()?;
    let dir = tempfile::tempdir()?;
    let topic = unique_name("e2e_sasl");
    let dead_letters = format!("{topic}.dlq");
    // A broker that checks SCRAM credentials, behind stunnel: SASL_SSL,
    // what MSK and most managed clusters ask for.
    let (plain, secure) = (free_port()?, free_port()?);
    let broker = LocalBroker::start_sasl(
        dir.path(),
        plain,
        secure,
        &[
            ScramUser {
                mechanism: "scram256",
                name: "agent",
                password: "agent-secret",
            },
            ScramUser {
                mechanism: "scram512",
                name: "ingester",
                password: "ingester-secret",
            },
        ],
        &[(&topic, 2), (&dead_letters, 1)],
    )?;
    let stunnel = Stunnel::start(dir.path(), &tls, secure, plain, false)?;
    let logs = || format!("broker:\n{}\nstunnel:\n{}", broker.log(), stunnel.log());

    // TLS without SASL gets nothing.
    let anonymous: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stunnel.brokers())
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", tls.join("ca.pem").display().to_string())
        .create()?;
    ensure!(
        anonymous
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err(),
        "a client without SASL got metadata from a broker that requires it"
    );

    // The ingester (SCRAM-SHA-512) carries loadgen's records.
    let ingester_password = dir.path().join("ingester.password");
    std::fs::write(&ingester_password, "ingester-secret\n")?;
    let sasl_env = TestEnv {
        kafka_brokers: stunnel.brokers(),
        ..env.clone()
    };
    let (mut ingester, db) = ingest_through(
        &env,
        &sasl_env,
        dir.path(),
        &topic,
        &(kafka_tls(&tls, false) + &kafka_sasl("SCRAM-SHA-512", "ingester", &ingester_password)),
        logs,
    )
    .await?;

    // The agent (SCRAM-SHA-256) with the wrong password is refused and
    // spools; the right one in the same file and SIGHUP deliver it all.
    let agent_password = dir.path().join("agent.password");
    std::fs::write(&agent_password, "not-the-secret\n")?;
    let host = unique_name("sasl-agent");
    let port = free_port()?;
    let config = agent_config(
        &stunnel.brokers(),
        &topic,
        &host,
        &dir.path().join("spool"),
        &(format!("[http]\nlisten = \"127.0.0.1:{port}\"\n[collect]\ndisable = [\"processes\"]\n")
            + &kafka_tls(&tls, false)
            + &kafka_sasl("SCRAM-SHA-256", "agent", &agent_password)),
    );
    let mut agent = Service::start(&dir.path().join("agent"), &config)?;
    let refused = Refused {
        env: &env,
        db: &db,
        host: &host,
        port,
    };
    refused.spools(&agent, "authentication failed").await?;
    std::fs::write(&agent_password, "agent-secret\n")?;
    spillway_e2e::process::signal(agent.pid().context("agent not running")?, "HUP")?;
    refused.delivers_every_tick(&agent, &ingester).await?;
    ensure!(
        agent.terminate(Duration::from_secs(15))?,
        "agent exited non-zero"
    );
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    Ok(())
}

/// The database the stack's restricted users may see (scripts/stack/clickhouse-users.xml).
const RESTRICTED_DB: &str = "spillway_restricted";

#[tokio::test]
#[ignore = "needs the local stack"]
async fn the_ingester_runs_on_its_own_database_only_and_grafana_only_reads() -> Result<()> {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir()?;
    let topic = unique_name("e2e_rights");
    env.create_topic(&topic, 2).await?;
    // The migrations need DDL: an administrator runs them.
    for shard in 0..env.clickhouse_urls.len() {
        env.clickhouse(shard)
            .query(&format!("DROP DATABASE IF EXISTS {RESTRICTED_DB}"))
            .execute()
            .await?;
    }
    spillway_e2e::ingest::migrate(&env, dir.path(), &topic, RESTRICTED_DB)?;
    let restricted = TestEnv {
        clickhouse_user: "spillway_ingester".into(),
        clickhouse_password: "ingester".into(),
        ..env.clone()
    };
    let mut ingester = Service::ingester(
        &dir.path().join("ingester"),
        &ingester_config(&restricted, &topic, &unique_name("g"), RESTRICTED_DB),
        &[],
    )?;
    let rows = spillway_e2e::ingest::loadgen(&env, dir.path(), &topic, "rights", 4, 25)?;
    wait_rows(&env, RESTRICTED_DB, rows, Duration::from_secs(90), || {
        ingester.log()
    })
    .await?;
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero:\n{}",
        ingester.log()
    );

    let as_user = |user: &str, password: &str| {
        env.clickhouse(0)
            .with_user(user)
            .with_password(password)
            .with_database(RESTRICTED_DB)
    };
    let ingester_user = as_user("spillway_ingester", "ingester");
    let denied = ingester_user
        .query("CREATE DATABASE spillway_not_allowed")
        .execute()
        .await
        .err()
        .context("the ingester's user created another database")?;
    ensure!(
        denied.to_string().contains("Access denied"),
        "the ingester's user was refused another database for another reason: {denied}"
    );
    let grafana = as_user("spillway_grafana", "grafana");
    let seen: u64 = grafana
        .query("SELECT count() FROM samples_all")
        .fetch_one()
        .await?;
    ensure!(seen == rows, "grafana's user sees {seen} of {rows} rows");
    let refused = grafana
        .query("INSERT INTO ingester_status (time, ingester) VALUES (now(), 'grafana')")
        .execute()
        .await
        .err()
        .context("grafana's user could insert")?;
    ensure!(
        refused.to_string().contains("readonly"),
        "grafana's insert refused for another reason: {refused}"
    );
    Ok(())
}

/// A plain HTTP/1.1 server on a port of its own that answers every request
/// `200 OK` and passes on each request (head and body), for stunnel to put
/// TLS in front of: a stand-in for an OpenTelemetry collector's OTLP/HTTP
/// receiver, which answers an export with 200.
fn http_receiver() -> Result<(u16, std::sync::mpsc::Receiver<Vec<u8>>)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let Ok(write_half) = conn.try_clone() else {
                continue;
            };
            let (mut reader, mut writer) = (BufReader::new(conn), write_half);
            // Requests on one kept-alive connection, until it closes.
            loop {
                let mut request = Vec::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    request.extend_from_slice(line.as_bytes());
                    if line == "\r\n" {
                        break;
                    }
                }
                if request.is_empty() {
                    break;
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    break;
                }
                request.extend_from_slice(&body);
                // A full channel drops the request: the test reads the first.
                let _full = tx.try_send(request);
                if writer
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    Ok((port, rx))
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn the_agent_exports_its_own_metrics_to_an_https_collector_signed_by_the_operators_ca()
-> Result<()> {
    let env = TestEnv::from_env();
    let tls = tls_dir()?;
    let dir = tempfile::tempdir()?;
    let (plain, requests) = http_receiver()?;
    let secure = free_port()?;
    let stunnel = Stunnel::start(dir.path(), &tls, secure, plain, false)?;
    let topic = unique_name("e2e_otlp");
    env.create_topic(&topic, 1).await?;
    let config = agent_config(
        &env.kafka_brokers,
        &topic,
        &unique_name("otlp"),
        &dir.path().join("spool"),
        &format!(
            "[telemetry]\notlp_endpoint = \"https://127.0.0.1:{secure}\"\notlp_interval = \"1s\"\n"
        ),
    );
    // The collector's certificate is signed by the test CA, which the
    // system store lacks: SSL_CERT_FILE names it, as an operator would.
    let ca = tls.join("ca.pem").display().to_string();
    let mut agent = Service::agent_with_env(
        &dir.path().join("agent"),
        &config,
        &[("SSL_CERT_FILE", &ca)],
    )?;
    let request =
        tokio::task::spawn_blocking(move || requests.recv_timeout(Duration::from_secs(30)))
            .await?
            .map_err(|_| {
                anyhow::anyhow!(
                    "no OTLP export over HTTPS in 30 s:\n{}\nstunnel:\n{}",
                    agent.log(),
                    stunnel.log()
                )
            });
    let request = request?;
    let text = String::from_utf8_lossy(&request);
    ensure!(
        text.starts_with("POST /v1/metrics ") && text.contains("spillway.agent.ticks"),
        "not an OTLP metrics export: {text}"
    );
    ensure!(
        agent.terminate(Duration::from_secs(15))?,
        "agent exited non-zero:\n{}",
        agent.log()
    );
    Ok(())
}
