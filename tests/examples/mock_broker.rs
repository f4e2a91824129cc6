//! librdkafka's mock cluster as a broker process on loopback: a second
//! Kafka implementation for the end-to-end fault tests (tansu is the
//! first). Unlike tansu it returns commit metadata; like any in-memory
//! broker it forgets everything when it stops.
//!
//! The mock cluster has no CreateTopics: topics are created through a
//! control port instead, one line per topic (`NAME PARTITIONS`), answered
//! with `ok` or `error: …`. The tests use it when `SPILLWAY_KAFKA_CONTROL`
//! names it.
//!
//! ```sh
//! cargo run -p spillway-e2e --example mock_broker
//! # bootstrap 127.0.0.1:40123 control 127.0.0.1:40124
//! ```
//!
//! Runs until it is signalled.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use anyhow::{Context, Result};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

fn main() -> Result<()> {
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).context("cannot start librdkafka's mock cluster")?;
    let control = TcpListener::bind("127.0.0.1:0")?;
    println!(
        "bootstrap {} control {}",
        cluster.bootstrap_servers(),
        control.local_addr()?
    );
    std::io::stdout().flush()?;

    // The cluster is not Send: requests come to this thread.
    let (requests, incoming) = mpsc::sync_channel::<(String, mpsc::SyncSender<String>)>(16);
    std::thread::spawn(move || {
        for stream in control.incoming().flatten() {
            let requests = requests.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut writer = stream.try_clone()?;
                for line in BufReader::new(stream).lines() {
                    let (reply, answer) = mpsc::sync_channel(1);
                    requests.send((line?, reply))?;
                    writeln!(writer, "{}", answer.recv()?)?;
                }
                Ok(())
            });
        }
    });
    for (line, reply) in incoming {
        let answer = match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, partitions] => match partitions.parse::<i32>() {
                Ok(n) if n > 0 => match cluster.create_topic(name, n, 1) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("error: {e}"),
                },
                _ => format!("error: bad partition count {partitions:?}"),
            },
            _ => format!("error: expected `NAME PARTITIONS`, got {line:?}"),
        };
        // The asker may have gone; the topic is made either way.
        reply.send(answer).ok();
    }
    Ok(())
}
