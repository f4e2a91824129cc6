//! The `exec` input: a command whose standard output is Prometheus text,
//! killed if it outlives its timeout. Its samples get an `exec` label with the
//! program name.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{CollectError, Collector, Samples, prom};
use crate::config::ExecConfig;

/// Largest output read from a command; more is an error, not a memory leak.
const MAX_OUTPUT: u64 = 4 * 1024 * 1024;

pub(crate) struct ExecCollector {
    command: Vec<String>,
    timeout: Duration,
    label: String,
}

impl ExecCollector {
    pub(crate) fn new(c: &ExecConfig) -> Self {
        let label = c
            .command
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
            .unwrap_or_default();
        ExecCollector {
            command: c.command.clone(),
            timeout: c.timeout,
            label,
        }
    }

    fn run(&self) -> Result<String, CollectError> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| CollectError::Other("exec command is empty".into()))?;
        let io = |what: &str| {
            let what = format!("{what} `{program}`");
            move |source| CollectError::Io { what, source }
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("cannot start"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| CollectError::Other("no stdout".into()))?;
        // Read on a helper thread so that a command that never closes its
        // output cannot outlive the timeout.
        let reader = std::thread::spawn(move || {
            let mut buf = String::new();
            stdout
                .take(MAX_OUTPUT)
                .read_to_string(&mut buf)
                .map(|_| buf)
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io("cannot wait for"))? {
                break status;
            }
            if Instant::now() >= deadline {
                // Best effort: the child may have exited in between.
                let _killed = child.kill();
                let _reaped = child.wait();
                return Err(CollectError::Other(format!(
                    "`{program}` timed out after {:?} and was killed",
                    self.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let output = reader
            .join()
            .map_err(|_| CollectError::Other("output reader panicked".into()))?
            .map_err(io("cannot read output of"))?;
        if !status.success() {
            return Err(CollectError::Other(format!(
                "`{program}` exited with {status}"
            )));
        }
        Ok(output)
    }
}

impl Collector for ExecCollector {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let text = self.run()?;
        prom::parse_into(&text, &[("exec", &self.label)], out).map_err(|e| {
            CollectError::Other(format!("cannot parse output of `{}`: {e}", self.label))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_a_command_and_kills_one_that_hangs() {
        let ok = ExecCollector::new(&ExecConfig {
            command: vec!["sh".into(), "-c".into(), "echo 'jobs 3'".into()],
            timeout: Duration::from_secs(5),
        });
        let mut out = Samples::default();
        let mut ok = ok;
        ok.collect(&mut out).unwrap();
        assert_eq!(out.into_vec()[0].value, 3.0);

        let mut hang = ExecCollector::new(&ExecConfig {
            command: vec!["sleep".into(), "10".into()],
            timeout: Duration::from_millis(100),
        });
        let started = Instant::now();
        let err = hang.collect(&mut Samples::default()).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
