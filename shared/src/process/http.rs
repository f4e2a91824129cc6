//! The HTTP listener.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

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
