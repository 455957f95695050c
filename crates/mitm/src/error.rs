//! The error type of the TLS layer.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// What went wrong in the TLS layer; each variant says which file, peer or
/// step.
#[derive(Debug, Error)]
pub enum MitmError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: not usable PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error(
        "the CA key {path} can be read by other users (mode {mode:o}); restrict it with `chmod 600 {path}`",
        path = path.display()
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error(
        "the CA key {key} is not the key of the CA certificate {cert} (their public keys differ): every forged \
         certificate would fail at the clients; give the key that belongs to the certificate",
        key = key.display(),
        cert = cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot forge a certificate: {0}")]
    Forge(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("TLS with the client: {0}")]
    Client(rustls::Error),
    #[error("TLS with the server: {0}")]
    Server(rustls::Error),
}

impl MitmError {
    pub(crate) fn file(path: &Path, err: impl std::fmt::Display) -> Self {
        MitmError::File {
            path: path.to_owned(),
            reason: err.to_string(),
        }
    }

    pub(crate) fn forge(err: impl std::fmt::Display) -> Self {
        MitmError::Forge(err.to_string())
    }
}
