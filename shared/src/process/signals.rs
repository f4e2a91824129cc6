//! SIGTERM and SIGINT: the first starts a graceful shutdown, a second one
//! ends the process at once (for an operator who will not wait for the
//! shutdown's deadline).

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (15).
    Term,
    /// SIGINT (2), Ctrl-C.
    Int,
}

impl Signal {
    /// The shell's exit status for a process ended by this signal.
    pub fn exit_code(self) -> i32 {
        128 + match self {
            Signal::Term => 15,
            Signal::Int => 2,
        }
    }
}

/// Listens for SIGTERM and SIGINT: the first cancels `shutdown`, a second
/// exits the process with status 128 + the signal's number.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    let (tx, rx) = mpsc::channel(2);
    let forward = async move {
        loop {
            let s = tokio::select! {
                Some(()) = term.recv() => Signal::Term,
                Some(()) = int.recv() => Signal::Int,
                else => return,
            };
            if tx.send(s).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = forward => {}
        () = stop_on_signals(rx, shutdown, |code| std::process::exit(code)) => {}
    }
}

/// The policy of [`stop_on_signal`] over any stream of signals, with the
/// exit injected (tests).
pub async fn stop_on_signals(
    mut signals: mpsc::Receiver<Signal>,
    shutdown: CancellationToken,
    exit: impl FnOnce(i32),
) {
    let Some(first) = signals.recv().await else {
        return;
    };
    tracing::info!(signal = ?first, "stopping; a second signal ends the process at once");
    shutdown.cancel();
    if let Some(second) = signals.recv().await {
        tracing::warn!(signal = ?second, "second signal: exiting without finishing the shutdown");
        exit(second.exit_code());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_signal_cancels_and_the_second_exits() {
        let (tx, rx) = mpsc::channel(2);
        let shutdown = CancellationToken::new();
        let exited = std::sync::Arc::new(std::sync::Mutex::new(None));
        let record = exited.clone();
        let task = tokio::spawn(stop_on_signals(rx, shutdown.clone(), move |code| {
            *record.lock().expect("lock") = Some(code);
        }));
        tx.send(Signal::Term).await.expect("send");
        shutdown.cancelled().await;
        assert_eq!(
            *exited.lock().expect("lock"),
            None,
            "one signal must not exit"
        );
        tx.send(Signal::Int).await.expect("send");
        task.await.expect("task");
        assert_eq!(*exited.lock().expect("lock"), Some(130));
    }

    #[tokio::test]
    async fn no_signal_no_shutdown() {
        let (tx, rx) = mpsc::channel(2);
        let shutdown = CancellationToken::new();
        drop(tx);
        stop_on_signals(rx, shutdown.clone(), |_| panic!("exited")).await;
        assert!(!shutdown.is_cancelled());
    }
}
