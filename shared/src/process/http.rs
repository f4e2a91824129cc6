//! The HTTP listener.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Serves `app` on `addr`, when there is one, until `shutdown`, in a task
/// of its own; a listener that fails is logged (the process goes on: it
/// serves no metrics, but its work is not the listener's).
pub fn spawn(
    addr: Option<SocketAddr>,
    app: impl FnOnce() -> axum::Router,
    shutdown: CancellationToken,
) {
    let Some(addr) = addr else {
        return;
    };
    let app = app();
    tokio::spawn(async move {
        if let Err(e) = serve(addr, app, shutdown).await {
            tracing::error!(%addr, error = %e, "http listener failed");
        }
    });
}

/// Serves `app` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http listener up");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
