//! A short chaos run: a seeded random schedule of the faults the other tests
//! inject one at a time (ingester kill -9, ingester SIGTERM, a ClickHouse
//! replica killed and restarted) while simulated agents produce in real
//! time, two ingesters share the work, and ClickHouse is one shard of two
//! replicas. The seed is printed first; replay a failure with
//! `SPILLWAY_CHAOS_SEED=<seed>`. `SPILLWAY_CHAOS_SECS` sets the length of
//! the fault phase (default 60). It ends with one `chaos-result` line
//! (faults, rows lost, duplicates, records not yet ingested, and whose fault
//! a stall is, with the evidence) that `bench/chaos.sh` collects.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spillway_e2e::clickhouse_server::LocalClickHouse;
use spillway_e2e::ingest::{
    distinct_rows, ingester_config, migrate_with, rollup_rows, total_rows, with_replicas,
};
use spillway_e2e::process::Service;
use spillway_e2e::verdict::{group_assigns, verdict};
use spillway_e2e::{TestEnv, unique_name};

const HOSTS: u64 = 100;
const SAMPLES: u64 = 40;
const PARTITIONS: i32 = 4;

#[tokio::test]
#[ignore = "needs the local stack"]
async fn seeded_chaos_loses_nothing() -> Result<()> {
    let seed: u64 = match std::env::var("SPILLWAY_CHAOS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => rand::random(),
    };
    let secs: u64 = std::env::var("SPILLWAY_CHAOS_SECS").map_or(Ok(60), |s| s.parse())?;
    println!("chaos seed {seed} ({secs} s); replay with SPILLWAY_CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let base = TestEnv::from_env();
    let dir = tempfile::tempdir()?;
    let mut replicas = LocalClickHouse::start_cluster(&dir.path().join("clickhouse"), 1, 2)?
        .into_iter()
        .next()
        .unwrap_or_default();
    // Rows are counted on the first replica (the second catches up).
    let env = TestEnv {
        clickhouse_urls: vec![replicas[0].url()],
        clickhouse_cluster: None,
        ..base
    };
    let (topic, group, db) = (
        unique_name("e2e_chaos"),
        unique_name("g"),
        unique_name("e2e_chaos"),
    );
    env.create_topic(&topic, PARTITIONS).await?;
    let config = with_replicas(
        &ingester_config(&env, &topic, &group, &db),
        std::slice::from_ref(&replicas),
    );
    migrate_with(&dir.path().join("migrate"), &config)?;
    let mut members = vec![
        Service::ingester(&dir.path().join("a"), &config, &[])?,
        Service::ingester(&dir.path().join("b"), &config, &[])?,
    ];
    // Agents in real time for the whole fault phase, 1 s interval.
    let ticks = secs + 5;
    let (hosts, ticks_s, samples) = (HOSTS.to_string(), ticks.to_string(), SAMPLES.to_string());
    let mut load = Service::ingester(
        &dir.path().join("load"),
        &ingester_config(&env, &topic, "loadgen", "unused"),
        &[
            "loadgen",
            "--topic",
            &topic,
            "--hosts",
            &hosts,
            "--ticks",
            &ticks_s,
            "--samples",
            &samples,
            "--host-prefix",
            "chaos",
            "--interval",
            "1s",
        ],
    )?;
    let expected = HOSTS * ticks * SAMPLES;

    let start = Instant::now();
    let mut faults = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(3000..9000))).await;
        let at = start.elapsed().as_secs_f32();
        let down = Duration::from_millis(rng.random_range(500..6000));
        match rng.random_range(0..3) {
            0 => {
                let i = rng.random_range(0..members.len());
                members[i].kill9()?;
                tokio::time::sleep(down).await;
                members[i].restart()?;
                faults.push(format!(
                    "{at:.0}s kill -9 ingester {i}, back after {down:?}"
                ));
            }
            1 => {
                let i = rng.random_range(0..members.len());
                ensure!(
                    members[i].terminate(Duration::from_secs(40))?,
                    "ingester {i} exited non-zero on SIGTERM:\n{}",
                    members[i].log()
                );
                tokio::time::sleep(down).await;
                members[i].restart()?;
                faults.push(format!(
                    "{at:.0}s SIGTERM ingester {i}, back after {down:?}"
                ));
            }
            _ => {
                let i = rng.random_range(0..replicas.len());
                replicas[i].kill()?;
                tokio::time::sleep(down).await;
                replicas[i].restart()?;
                faults.push(format!(
                    "{at:.0}s ClickHouse replica {i} killed, back after {down:?}"
                ));
            }
        }
    }
    ensure!(
        load.wait(Duration::from_secs(60))?,
        "loadgen failed:\n{}",
        load.log()
    );
    let calm = Instant::now();
    // tansu 0.6 keeps members killed with -9 in the group and may assign
    // them partitions again, which then wait in the topic (see
    // ARCHITECTURE.md, known broker limits). If the rows are not all in
    // after 60 s, restart both members, as an operator would, so that the
    // group is formed anew. Rows whose offsets were committed without
    // being stored would stay missing: that is what this test catches.
    let mut restarted = false;
    loop {
        let distinct = distinct_rows(&env, &db).await?;
        if distinct >= expected || calm.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if distinct_rows(&env, &db).await? < expected {
        println!("seed {seed}: rows still missing 60 s after the faults; restarting both members");
        for m in &mut members {
            ensure!(
                m.terminate(Duration::from_secs(40))?,
                "a member exited non-zero"
            );
        }
        for m in &mut members {
            m.restart()?;
        }
        restarted = true;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while distinct_rows(&env, &db).await? < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total = total_rows(&env, &db).await?;
    let distinct = distinct_rows(&env, &db).await?;
    let (minute, hour) = rollup_rows(&env, &db).await?;
    let logs = || {
        members
            .iter()
            .map(Service::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    // Where every record is: stored, lost (committed past, rows missing) or
    // not yet ingested (a stall). If anything is missing, whose stall: with
    // the members stopped, a plain client joining the group gets partitions
    // (the coordinator works: the ingester's fault) or not (the broker's).
    let v = verdict(&env, &topic, PARTITIONS, &group, &db).await?;
    let (lost, stalled) = (v.lost * SAMPLES, v.pending * SAMPLES);
    let mut blame = "none".to_owned();
    if v.pending > 0 {
        let logs = logs();
        for m in &mut members {
            let _ = m.terminate(Duration::from_secs(40))?;
        }
        blame = if group_assigns(&env, &topic, &group, Duration::from_secs(30))? {
            "ingester (a plain client joining the group got partitions within 30 s)".to_owned()
        } else {
            "broker (a plain client joining the group got no partition in 30 s: its \
             coordinator is stuck)"
                .to_owned()
        };
        println!("{logs}");
    }
    println!("seed {seed}: {v}");
    println!(
        "chaos-result seed={seed} secs={secs} faults={} produced={expected} stored={total} \
         distinct={distinct} lost={lost} duplicates={} not_yet_ingested={stalled} \
         tiers={minute}/{hour} restarted={restarted} stall_blame={blame:?} schedule={faults:?}",
        faults.len(),
        total - distinct,
    );
    ensure!(
        lost == 0,
        "seed {seed}: {lost} rows lost (their offsets committed, the rows not stored)"
    );
    ensure!(
        distinct == expected,
        "seed {seed}: {stalled} rows not yet ingested {:?} after the faults (a stall; blame: \
         {blame})",
        calm.elapsed()
    );
    ensure!(
        v.records * SAMPLES == expected && v.stored == v.records,
        "seed {seed}: the topic's records and the stored rows disagree: {v}"
    );
    ensure!(
        total == distinct,
        "seed {seed}: {} duplicate rows",
        total - distinct
    );
    ensure!(
        minute == total && hour == total,
        "seed {seed}: the tiers count {minute} (1 minute) and {hour} (1 hour) rows, the raw table {total}"
    );
    for m in &mut members {
        ensure!(
            m.terminate(Duration::from_secs(40))?,
            "a member exited non-zero"
        );
    }
    Ok(())
}
