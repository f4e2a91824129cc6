//! Faults across the whole pipeline: real agents, a broker of the test's own
//! (so it can be killed), the real ingester and the real ClickHouse servers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use spillway_e2e::broker::LocalBroker;
use spillway_e2e::broker::free_port;
use spillway_e2e::ingest::{Ingesting, Ticks, contiguous, start_ingesting, ticks};
use spillway_e2e::process::{AgentProcess, Service, agent_config, agent_metric};
use spillway_e2e::{TestEnv, strip_ansi, unique_name};

/// The agent's count of tick slots it missed (a tick ran past the next one).
const MISSED: &str = "spillway_agent_ticks_missed_total";

/// Appends half a frame to the newest spool segment: what a crash in the
/// middle of a write leaves.
fn tear_spool_tail(spool: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let newest = std::fs::read_dir(spool)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .context("no spool segment")?;
    let mut f = std::fs::OpenOptions::new().append(true).open(&newest)?;
    // A frame header announcing 4000 bytes, a CRC, and 3 bytes of payload.
    f.write_all(&4000u32.to_le_bytes())?;
    f.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3])?;
    Ok(())
}

/// The broker scenario: two agents and an ingester running, the
/// broker killed and restarted empty (memory storage) 30 s later, and one
/// agent killed -9 during the outage with its spool's tail torn. Every tick
/// of every agent instance must land in ClickHouse, contiguous from 0.
#[tokio::test]
#[ignore = "needs the local stack"]
async fn broker_restarted_empty_while_agents_run_loses_no_tick() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = LocalBroker::start(dir.path())?;
    let env = TestEnv {
        kafka_brokers: broker.brokers(),
        ..TestEnv::from_env()
    };
    let Ingesting {
        topic,
        db,
        mut ingester,
        ..
    } = start_ingesting(&env, dir.path(), "e2e_brk", 2).await?;
    let hosts = [unique_name("brk_a"), unique_name("brk_b")];
    let mut agents = Vec::new();
    let mut ports = Vec::new();
    let started = Instant::now();
    for h in &hosts {
        let d = dir.path().join(h);
        std::fs::create_dir_all(&d)?;
        let port = free_port()?;
        let config = agent_config(
            &broker.brokers(),
            &topic,
            h,
            &d.join("spool"),
            &format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[collect]\ndisable = [\"processes\"]\n"
            ),
        );
        agents.push(AgentProcess::start(&d, &config)?);
        ports.push(port);
    }
    let logs = |agents: &[Service], ingester: &Service| {
        let mut s: Vec<String> = agents.iter().map(Service::log).collect();
        s.push(ingester.log());
        s.join("\n---\n")
    };

    // Running: a few ticks of each agent land. The broker is killed only
    // when ClickHouse holds every tick made so far, half-way between two
    // ticks (they are aligned to whole seconds): its memory storage takes
    // with it whatever it acknowledged and nobody consumed yet, which no
    // client can get back, and which a durable broker would not lose.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        spillway_e2e::process::half_way_between_ticks().await?;
        // An agent that has not opened its HTTP port yet has made nothing
        // (a loaded machine takes more than a second to start one).
        let mut made = Vec::new();
        for &p in &ports {
            made.push(
                agent_metric(p, "spillway_agent_ticks_total")
                    .await
                    .map_or(0, |v| v as u64),
            );
        }
        let t = ticks(&env, &db, &hosts).await?;
        let caught_up = t.len() == 2
            && made.iter().all(|&m| m > 0)
            && hosts.iter().zip(&made).all(|(h, m)| {
                t.iter().any(|i| {
                    &i.host_id == h && i.distinct >= 3 && i.distinct == *m && i.max_seq + 1 == *m
                })
            });
        if caught_up {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "ClickHouse never caught up with the agents before the outage: {t:?}, made {made:?}\n{}",
            logs(&agents, &ingester)
        );
    }

    broker.kill()?;
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Agent A dies mid-outage, leaving a torn spool tail, and comes back.
    let a1_missed = agent_metric(ports[0], MISSED).await? as u64;
    agents[0].kill9()?;
    let a_killed = started.elapsed();
    let spool_a = dir.path().join(&hosts[0]).join("spool");
    tear_spool_tail(&spool_a)?;
    agents[0].restart()?;
    let a_back = Instant::now();
    // The torn tail is cut and counted: 4 + 7 bytes of half a frame.
    let deadline = Instant::now() + Duration::from_secs(20);
    let truncated = loop {
        match agent_metric(ports[0], "spillway_agent_spool_truncated_bytes_total").await {
            Ok(v) => break v,
            Err(e) => ensure!(Instant::now() < deadline, "agent A's /metrics: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        truncated == 11.0,
        "agent A counted {truncated} torn bytes, not 11"
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;

    broker.restart()?;
    // The agents' producers may ask for the topic first (and so create it).
    env.ensure_topic(&topic, 2).await?;
    let restarted = Instant::now();
    // Both agents replay their spools and tick a few more times.
    let deadline = Instant::now() + Duration::from_secs(90);
    for &p in &ports {
        while agent_metric(p, "spillway_agent_spool_records").await? > 0.0 {
            ensure!(
                Instant::now() < deadline,
                "an agent did not drain its spool after the broker came back:\n{}",
                logs(&agents, &ingester)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let drained = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // What each running instance says it made, just before it stops (it may
    // tick once more on its way out).
    let mut reported = Vec::new();
    for &p in &ports {
        reported.push((
            agent_metric(p, "spillway_agent_ticks_total").await? as u64,
            agent_metric(p, MISSED).await? as u64,
        ));
    }
    let mut stopped = Vec::new();
    for a in &mut agents {
        stopped.push(Instant::now());
        ensure!(
            a.terminate(Duration::from_secs(15))?,
            "an agent exited non-zero"
        );
    }

    // Everything the agents made lands, contiguous per instance: the first
    // instance of A up to its kill, its second instance, and B throughout.
    let deadline = Instant::now() + Duration::from_secs(120);
    let t = loop {
        let t = ticks(&env, &db, &hosts).await?;
        let settled = t.len() == 3 && contiguous(&t);
        if settled {
            // Stable over a second: nothing still arriving.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if ticks(&env, &db, &hosts).await? == t {
                break t;
            }
            continue;
        }
        ensure!(
            Instant::now() < deadline,
            "not every tick landed after the broker came back: {t:?}\n{}",
            logs(&agents, &ingester)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let recovery = restarted.elapsed();
    let a_log = strip_ansi(&agents[0].log());
    ensure!(
        a_log.contains("torn tail"),
        "agent A did not report its torn spool tail:\n{a_log}"
    );
    // No tail lost either: each instance made about one tick per second of
    // its life (wall-clock aligned, so allow 2 at the edges).
    let lived = |host: usize, first: bool| -> u64 {
        let end = stopped[host];
        let secs = match (host, first) {
            (0, true) => a_killed.as_secs_f64(),
            (0, false) => end.duration_since(a_back).as_secs_f64(),
            _ => end.duration_since(started).as_secs_f64(),
        };
        secs as u64
    };
    let a: Vec<&Ticks> = t.iter().filter(|i| i.host_id == hosts[0]).collect();
    let b: Vec<&Ticks> = t.iter().filter(|i| i.host_id == hosts[1]).collect();
    ensure!(a.len() == 2 && b.len() == 1, "instances: {t:?}");
    // A's instances in the order they started.
    let ids: Vec<&str> = a_log
        .lines()
        .filter(|l| l.contains("spillway-agent starting"))
        .filter_map(|l| l.split("instance_id=").nth(1)?.split_whitespace().next())
        .map(|id| id.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .collect();
    ensure!(
        ids.len() == 2,
        "agent A started {} times:\n{a_log}",
        ids.len()
    );
    let (a1, a2) = if a[0].instance_id == ids[0] {
        (a[0], a[1])
    } else {
        (a[1], a[0])
    };
    for (i, life, missed) in [
        (a1, lived(0, true), a1_missed),
        (a2, lived(0, false), reported[0].1),
        (b[0], lived(1, false), reported[1].1),
    ] {
        ensure!(
            i.distinct + missed + 2 >= life,
            "{} ticks of {}/{} in ClickHouse and {missed} slots missed, but it lived {life} s \
             at a 1 s interval; agent A's log:\n{a_log}",
            i.distinct,
            i.host_id,
            i.instance_id
        );
    }
    for (i, (made, _)) in [(a2, reported[0]), (b[0], reported[1])] {
        ensure!(
            i.distinct >= made,
            "{}/{} made {made} ticks but ClickHouse holds {}",
            i.host_id,
            i.instance_id,
            i.distinct
        );
    }
    let made: u64 = t.iter().map(|i| i.distinct).sum();
    let dups: u64 = t.iter().map(|i| i.rows - i.distinct_rows).sum();
    println!(
        "broker killed for {:?} and restarted empty, agent A kill -9'd with a torn spool \
         tail: {} agent instances, {made} ticks, all contiguous from 0 (lost 0), \
         {dups} duplicate rows, {} tick slots missed; spools drained {drained:?} and all landed {recovery:?} \
         after the broker restart",
        restarted.duration_since(outage),
        t.len(),
        a1_missed + reported[0].1 + reported[1].1
    );
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    Ok(())
}
