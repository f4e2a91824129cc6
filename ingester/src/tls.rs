//! TLS towards ClickHouse: the `tls` blocks of `[clickhouse]` and of each
//! shard, and the rustls configuration they become (rustls with the ring
//! provider: no C toolchain beyond what the build already needs). A leaf
//! module: the configuration validates with it, the sink connects with it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// HTTPS towards ClickHouse (used for `https://` URLs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseTls {
    /// PEM file of the CA(s) that sign the server's certificate; the
    /// system's CA store when unset.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM file of this client's certificate chain (mutual TLS).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM file of this client's private key (mutual TLS).
    pub key_file: Option<std::path::PathBuf>,
}

/// Why a shard's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// Which file (`ca_file`, ...).
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate and key together.
    #[error("client certificate and key: {0}")]
    ClientAuth(rustls::Error),
    /// The system's CA store could not be read and no CA file was given.
    #[error("no CA certificates: the system store gave none ({0}); set tls.ca_file")]
    NoRoots(String),
}

fn pem_error(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The rustls configuration of `tls` (system roots when it names no CA).
pub fn tls_config(tls: &ClickHouseTls) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in certificates("ca_file", path)? {
                roots.add(cert).map_err(|e| pem_error("ca_file", path, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsError::NoRoots(format!("{:?}", native.errors)));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::ClientAuth)?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("key_file", key, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::ClientAuth)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
