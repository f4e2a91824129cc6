//! The HTTP(S) client behind every ClickHouse connection: `http://` and
//! `https://` URLs, the system's CA store by default, a CA file of the
//! operator's, and a client certificate for mutual TLS (the `clickhouse`
//! crate has no option for the last two, so the client is built here and
//! handed to it, as its `custom_http_client` example does).
//!
//! The TLS side is [`crate::tls`]; connections are pooled as the crate's
//! own default client pools them.

use std::time::Duration;

use crate::config::ShardConfig;
use crate::tls::{ClickHouseTls, TlsError, tls_config};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// TCP keepalive, as the crate's default client.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// A server that does not accept a connection within this is taken as
/// down (a shard's next replica is tried): far below an INSERT's timeout,
/// so that an unreachable host fails over quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle connections are dropped before ClickHouse's keep-alive timeout
/// (3 s by default before 23.11) closes them under the client.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client for one server of a shard (`shard.url`, HTTP or HTTPS), with
/// schema validation off (ClickHouse 18.16 lacks the format it needs).
pub fn client(shard: &ShardConfig) -> Result<clickhouse::Client, TlsError> {
    Ok(http_client(shard)?
        .with_url(&shard.url)
        .with_user(&shard.user)
        .with_password(shard.password.expose())
        .with_database(&shard.database)
        .with_validation(false))
}

/// A `clickhouse` client for `shard` over its own HTTP(S) client.
fn http_client(shard: &ShardConfig) -> Result<clickhouse::Client, TlsError> {
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let mut builder = HyperClient::builder(TokioExecutor::new());
    if shard.url.starts_with("http://") {
        let plain = builder.pool_idle_timeout(POOL_IDLE_TIMEOUT).build(http);
        return Ok(clickhouse::Client::with_http_client(plain));
    }
    http.enforce_http(false);
    let tls = tls_config(shard.tls.as_ref().unwrap_or(&ClickHouseTls::default()))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let hyper = builder
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    Ok(clickhouse::Client::with_http_client(hyper))
}
