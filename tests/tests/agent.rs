//! The real agent binary against a real broker: what it publishes, and what
//! happens to its ticks when the broker goes away.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use spillway_e2e::broker::{LocalBroker, free_port};
use spillway_e2e::consume::{TopicReader, metrics_seqs};
use spillway_e2e::process::{AgentProcess, agent_config, agent_metric};
use spillway_e2e::{TestEnv, unique_name};
use spillway_shared::{MetricsRecord, Record, SeqRange};

fn metrics_of<'a>(
    records: &'a [Record],
    host_id: &'a str,
) -> impl Iterator<Item = &'a MetricsRecord> {
    records.iter().filter_map(move |r| match r {
        Record::Metrics(m) if m.origin.host_id == host_id => Some(m),
        _ => None,
    })
}

fn instances(records: &[Record], host_id: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for m in metrics_of(records, host_id) {
        if !seen.contains(&m.origin.instance_id) {
            seen.push(m.origin.instance_id.clone());
        }
    }
    seen
}

fn value(m: &MetricsRecord, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v))
        })
        .map(|s| s.value)
}

/// Checks that one tick has every collector family and sane values.
fn check_tick(m: &MetricsRecord) -> Result<()> {
    let names: BTreeSet<&str> = m.samples.iter().map(|s| s.name.as_str()).collect();
    for family in [
        "system.cpu.utilization",
        "system.cpu.logical.count",
        "system.memory.usage",
        "system.memory.utilization",
        "system.paging.usage",
        "system.filesystem.usage",
        "system.filesystem.inodes.usage",
        "system.disk.io",
        "system.disk.io.rate",
        "system.disk.await",
        "system.network.io",
        "system.network.io.rate",
        "system.network.errors",
        "system.network.packet.dropped",
        "system.cpu.load_average.1m",
        "system.uptime",
        "system.process.count",
        "process.cpu.utilization",
        "process.memory.usage",
        "spillway.agent.memory.rss",
    ] {
        ensure!(
            names.contains(family),
            "tick {} lacks {family}; has {names:?}",
            m.seq
        );
    }
    for s in &m.samples {
        if s.name.ends_with(".utilization") {
            ensure!(
                (0.0..=1.0).contains(&s.value),
                "{} = {} out of [0, 1]",
                s.name,
                s.value
            );
        }
        ensure!(
            s.value >= 0.0,
            "{} {:?} is negative: {}",
            s.name,
            s.labels,
            s.value
        );
    }
    // CPU modes of the whole machine add up to 1 (the first tick too).
    let cpu_total: f64 = m
        .samples
        .iter()
        .filter(|s| s.name == "system.cpu.utilization" && s.labels.len() == 1)
        .map(|s| s.value)
        .sum();
    ensure!(
        (cpu_total - 1.0).abs() < 0.01,
        "tick {}: cpu modes sum to {cpu_total}",
        m.seq
    );
    let limit = value(m, "system.memory.limit", &[]).context("memory limit")?;
    let used = value(m, "system.memory.usage", &[("system.memory.state", "used")])
        .context("memory used")?;
    ensure!(used <= limit, "memory used {used} > total {limit}");
    for fs in m
        .samples
        .iter()
        .filter(|s| s.name == "system.filesystem.limit")
    {
        let mount = &fs
            .labels
            .iter()
            .find(|l| l.key == "system.filesystem.mountpoint")
            .context("mountpoint")?
            .value;
        let used = value(
            m,
            "system.filesystem.usage",
            &[
                ("system.filesystem.mountpoint", mount),
                ("system.filesystem.state", "used"),
            ],
        )
        .context("filesystem used")?;
        ensure!(
            used <= fs.value,
            "{mount}: used {used} > total {}",
            fs.value
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn agent_publishes_contiguous_complete_ticks_and_stops_cleanly() -> Result<()> {
    let env = TestEnv::from_env();
    let topic = unique_name("e2e_agent");
    env.create_topic(&topic, 2).await?;
    let dir = tempfile::tempdir()?;
    let host = unique_name("host");
    let mut agent = AgentProcess::start(
        dir.path(),
        &agent_config(
            &env.kafka_brokers,
            &topic,
            &host,
            &dir.path().join("spool"),
            "",
        ),
    )?;
    let mut reader = TopicReader::new(&env.kafka_brokers, &topic)?;
    let got = reader
        .read_until(Duration::from_secs(45), |r| {
            metrics_of(r, &host).count() >= 4
        })
        .await?;
    ensure!(
        got,
        "fewer than 4 ticks within 45 s; agent log:\n{}",
        agent.log()
    );
    let ticks: Vec<&MetricsRecord> = metrics_of(&reader.records, &host).collect();
    let seqs: Vec<u64> = ticks.iter().map(|m| m.seq).collect();
    ensure!(
        seqs[..4] == [0, 1, 2, 3],
        "sequence numbers not contiguous from 0: {seqs:?}"
    );
    for t in &ticks {
        check_tick(t).with_context(|| format!("agent log:\n{}", agent.log()))?;
        ensure!(t.interval_ms == 1000);
    }
    ensure!(
        reader
            .records
            .iter()
            .any(|r| matches!(r, Record::Status(s) if s.origin.host_id == host)),
        "no status record"
    );
    let started = Instant::now();
    ensure!(
        agent.terminate(Duration::from_secs(10))?,
        "agent exited non-zero on SIGTERM"
    );
    println!("agent stopped {:?} after SIGTERM", started.elapsed());
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn sighup_reloads_the_config_without_losing_a_tick() -> Result<()> {
    let env = TestEnv::from_env();
    let topic = unique_name("e2e_reload");
    env.create_topic(&topic, 1).await?;
    let dir = tempfile::tempdir()?;
    let host = unique_name("host");
    let spool = dir.path().join("spool");
    let config = agent_config(&env.kafka_brokers, &topic, &host, &spool, "");
    let agent = AgentProcess::start(dir.path(), &config)?;
    let mut reader = TopicReader::new(&env.kafka_brokers, &topic)?;
    ensure!(
        reader
            .read_until(Duration::from_secs(45), |r| metrics_of(r, &host).count()
                >= 3)
            .await?,
        "no ticks; agent log:\n{}",
        agent.log()
    );
    agent.write_config(&config.replace("interval = \"1s\"", "interval = \"2s\""))?;
    spillway_e2e::process::signal(agent.pid().context("agent not running")?, "HUP")?;
    let reloaded = reader
        .read_until(Duration::from_secs(30), |r| {
            metrics_of(r, &host)
                .filter(|m| m.interval_ms == 2000)
                .count()
                >= 2
        })
        .await?;
    ensure!(
        reloaded,
        "no tick at the new interval after SIGHUP; agent log:\n{}",
        agent.log()
    );
    let inst = instances(&reader.records, &host);
    ensure!(
        inst.len() == 1,
        "the agent restarted instead of reloading: {inst:?}"
    );
    let seqs = metrics_seqs(&reader.records, &inst[0]);
    ensure!(
        seqs.iter().copied().eq(0..seqs.len() as u64),
        "ticks lost across the reload: {seqs:?}"
    );
    ensure!(
        agent.log().contains("configuration reloaded"),
        "no reload in the log"
    );
    Ok(())
}

async fn wait_for_metric(port: u16, name: &str, at_least: f64, timeout: Duration) -> Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(v) = agent_metric(port, name).await
            && v >= at_least
        {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "{name} did not reach {at_least} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The outage scenario on a broker of the test's own: 30 s without a
/// broker at a 1 s interval, with a kill -9 of the agent in the middle.
#[tokio::test]
#[ignore = "needs the local stack"]
async fn broker_outage_loses_no_tick_even_across_agent_kill9() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = LocalBroker::start(dir.path())?;
    let env = TestEnv {
        kafka_brokers: broker.brokers(),
        ..TestEnv::from_env()
    };
    let topic = unique_name("e2e_outage");
    env.create_topic(&topic, 1).await?;
    let host = unique_name("host");
    let port = free_port()?;
    let extra =
        format!("[http]\nlisten = \"127.0.0.1:{port}\"\n[collect]\ndisable = [\"processes\"]\n");
    let mut agent = AgentProcess::start(
        dir.path(),
        &agent_config(
            &broker.brokers(),
            &topic,
            &host,
            &dir.path().join("spool"),
            &extra,
        ),
    )?;

    // Before the outage: three ticks through, then the broker dies right after
    // a tick was read, so none is in flight at that moment.
    let mut before = TopicReader::new(&broker.brokers(), &topic)?;
    ensure!(
        before
            .read_until(Duration::from_secs(45), |r| metrics_of(r, &host).count()
                >= 3)
            .await?,
        "no ticks before the outage; agent log:\n{}",
        agent.log()
    );
    let n = metrics_of(&before.records, &host).count();
    before
        .read_until(Duration::from_secs(5), |r| metrics_of(r, &host).count() > n)
        .await?;
    broker.kill()?;
    let outage_start = Instant::now();
    let delivered_before = before.records.clone();
    let first_instance = instances(&delivered_before, &host).remove(0);
    drop(before);

    // Halfway through, kill -9 the agent, then start it again on the same spool.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let ticks_before_kill = agent_metric(port, "spillway_agent_ticks_total").await?;
    let spooled = agent_metric(port, "spillway_agent_spool_records").await?;
    agent.kill9()?;
    agent.restart()?;
    // The second instance spools too while the broker is still away.
    wait_for_metric(
        port,
        "spillway_agent_ticks_total",
        5.0,
        Duration::from_secs(20),
    )
    .await?;
    let remaining = Duration::from_secs(30).saturating_sub(outage_start.elapsed());
    tokio::time::sleep(remaining).await;
    let outage = outage_start.elapsed();

    broker.restart()?;
    // The agent's producer may ask for the topic first (and so create it).
    env.ensure_topic(&topic, 1).await?;
    let recovery_start = Instant::now();
    let ticks_now = wait_for_metric(
        port,
        "spillway_agent_ticks_total",
        1.0,
        Duration::from_secs(5),
    )
    .await?;
    let mut after = TopicReader::new(&broker.brokers(), &topic)?;
    // Every tick of both instances arrives: the first instance's up to the
    // kill, the second's up to now.
    let mut all = Vec::new();
    let done = after
        .read_until(Duration::from_secs(60), |r| {
            let inst = instances(r, &host);
            inst.len() == 2 && {
                let s2 = metrics_seqs(r, &inst[1]);
                s2.len() as f64 >= ticks_now
                    && s2.last().is_some_and(|l| *l as usize + 1 == s2.len())
            }
        })
        .await?;
    all.extend(after.records.iter().cloned());
    ensure!(
        done,
        "not every tick arrived after recovery; agent log:\n{}",
        agent.log()
    );
    let recovery = recovery_start.elapsed();
    let second_instance = instances(&all, &host)
        .into_iter()
        .find(|i| *i != first_instance)
        .context("no second instance")?;
    // The first instance's ticks published before the outage went down with
    // the broker's memory storage, but the test read them then.
    all.extend(delivered_before);
    let first = metrics_seqs(&all, &first_instance);
    ensure!(
        first[0] == 0 && first.windows(2).all(|w| w[1] == w[0] + 1),
        "first instance has a gap: {first:?}"
    );
    let first_last = *first.last().context("first instance replayed nothing")?;
    ensure!(
        first_last + 2 >= ticks_before_kill as u64,
        "first instance: last replayed seq {first_last}, but it had made {ticks_before_kill} ticks"
    );
    println!(
        "outage {outage:?}; instance 1 made {ticks_before_kill} ticks, spooled {spooled} records \
         (counted at kill -9), all of seqs 0..={first_last} arrived; instance 2 replayed {} ticks \
         contiguously; recovery took {recovery:?}",
        metrics_seqs(&all, &second_instance).len()
    );
    ensure!(
        agent.terminate(Duration::from_secs(10))?,
        "agent exited non-zero"
    );
    Ok(())
}

/// A tiny spool and a long outage: the oldest ticks are dropped, and status
/// records name exactly the dropped sequence numbers.
#[tokio::test]
#[ignore = "needs the local stack"]
async fn full_spool_drops_oldest_and_reports_exactly_which() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = LocalBroker::start(dir.path())?;
    let env = TestEnv {
        kafka_brokers: broker.brokers(),
        ..TestEnv::from_env()
    };
    let topic = unique_name("e2e_spoolcap");
    env.create_topic(&topic, 1).await?;
    // Start with the broker already gone: the agent must start anyway.
    broker.kill()?;
    let host = unique_name("host");
    let port = free_port()?;
    let extra =
        format!("[http]\nlisten = \"127.0.0.1:{port}\"\n[collect]\ndisable = [\"processes\"]\n");
    let config = agent_config(
        &broker.brokers(),
        &topic,
        &host,
        &dir.path().join("spool"),
        &extra,
    )
    .replace(
        "[buffer]\n",
        "[buffer]\nspool_max_bytes = 131072\nspool_segment_bytes = 65536\n",
    );
    let mut agent = AgentProcess::start(dir.path(), &config)?;
    let dropped = wait_for_metric(
        port,
        "spillway_agent_records_dropped_total",
        3.0,
        Duration::from_secs(90),
    )
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))?;

    broker.restart()?;
    // The agent's producer may ask for the topic first (and so create it).
    env.ensure_topic(&topic, 1).await?;
    let ticks = wait_for_metric(
        port,
        "spillway_agent_ticks_total",
        1.0,
        Duration::from_secs(5),
    )
    .await?;
    let mut reader = TopicReader::new(&broker.brokers(), &topic)?;
    let reported = |records: &[Record]| -> BTreeSet<u64> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Status(s) if s.origin.host_id == host => Some(s.dropped.clone()),
                _ => None,
            })
            .flatten()
            .flat_map(|SeqRange { first, last }| first..=last)
            .collect()
    };
    // Wait until every tick up to `ticks` is either received or reported dropped.
    let complete = reader
        .read_until(Duration::from_secs(60), |r| {
            let Some(inst) = instances(r, &host).into_iter().next() else {
                return false;
            };
            let got: BTreeSet<u64> = metrics_seqs(r, &inst).into_iter().collect();
            let gone = reported(r);
            (0..ticks as u64).all(|s| got.contains(&s) || gone.contains(&s))
        })
        .await?;
    ensure!(
        complete,
        "ticks neither received nor reported; agent log:\n{}",
        agent.log()
    );
    let inst = instances(&reader.records, &host).remove(0);
    let got: BTreeSet<u64> = metrics_seqs(&reader.records, &inst).into_iter().collect();
    let gone = reported(&reader.records);
    ensure!(
        got.is_disjoint(&gone),
        "ticks both received and reported dropped: {:?}",
        got.intersection(&gone)
    );
    let max = *got.iter().max().context("nothing received")?;
    let missing: BTreeSet<u64> = (0..=max).filter(|s| !got.contains(s)).collect();
    ensure!(missing == gone, "missing {missing:?} but reported {gone:?}");
    // The oldest went first.
    ensure!(
        gone.iter().copied().eq(0..gone.len() as u64),
        "dropped ticks are not the oldest: {gone:?}"
    );
    println!(
        "{dropped} records dropped at the cap; {} ticks reported dropped, {} received",
        gone.len(),
        got.len()
    );
    ensure!(
        agent.terminate(Duration::from_secs(10))?,
        "agent exited non-zero"
    );
    Ok(())
}

/// SIGTERM starts a shutdown that may take `shutdown_timeout` (here: records
/// that cannot reach an absent broker); a second SIGTERM ends the process at
/// once, with the shell's status for a signal (143).
#[tokio::test]
async fn a_second_sigterm_ends_the_agent_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let nobody = format!("127.0.0.1:{}", free_port()?);
    let config = agent_config(
        &nobody,
        "unused",
        "second-signal",
        &dir.path().join("spool"),
        "",
    )
    .replace("shutdown_timeout = \"3s\"", "shutdown_timeout = \"120s\"")
    .replace("delivery_timeout = \"2s\"", "delivery_timeout = \"300s\"");
    let mut agent = AgentProcess::start(dir.path(), &config)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = agent.pid().context("agent not running")?;
    spillway_e2e::process::signal(pid, "TERM")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        agent.pid().is_some() && spillway_e2e::process::signal(pid, "0").is_ok(),
        "the agent did not wait for its undelivered records:\n{}",
        agent.log()
    );
    let second = Instant::now();
    spillway_e2e::process::signal(pid, "TERM")?;
    let clean = agent.wait(Duration::from_secs(10))?;
    ensure!(!clean, "a second SIGTERM must not look like a clean stop");
    ensure!(
        second.elapsed() < Duration::from_secs(10) && agent.log().contains("second signal"),
        "{}",
        agent.log()
    );
    Ok(())
}

/// `spillway-agent once | head -1`: the reader closes the pipe early; the
/// agent stops quietly with status 0 (was a panic, exit 101).
#[test]
fn once_into_a_reader_that_stops_early_ends_quietly() -> Result<()> {
    let bin = spillway_e2e::process::bin_path("spillway-agent", "SPILLWAY_E2E_AGENT_BIN");
    let mut child = std::process::Command::new(bin)
        .args(["once", "--format", "text"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The reader is gone before the agent has collected: its first line
    // hits a closed pipe (a pipe's buffer would swallow what is written
    // before the reader goes).
    drop(child.stdout.take().context("stdout")?);
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("panicked"),
        "{:?}, stderr:\n{stderr}",
        out.status
    );
    Ok(())
}
