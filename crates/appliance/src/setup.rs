//! Why the appliance's policy, TLS material, outputs or privilege drop
//! could not be set up: the error of [`crate::preflight()`] (`tlsgate
//! check`), of a reload, and (wrapped) of the data plane's start; and
//! how any such error reads on one line ([`error_text`]).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::capture::CaptureError;
use crate::connlog::ConnectionLogError;
use crate::pcap_stream::StreamError;

/// What could not be loaded, opened or applied; every variant names the
/// configuration key or file at fault.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error(transparent)]
    Tls(#[from] crate::engine::TlsSettingError),
    #[error("`log.keylog`")]
    KeyLog(#[source] crate::keylog::KeyLogError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    RunAsOutput(#[from] RunAsOutputError),
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    #[error(transparent)]
    ConnectionLog(#[from] ConnectionLogError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    PcapStream(#[from] StreamError),
    #[error("invalid device: {0}")]
    Device(String),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

/// The message of `err` followed by its causes, each once: a cause whose
/// text the message already holds is not repeated.
pub fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        let text = source.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = source.source();
    }
    message
}

/// A log or capture file that `run` could not write.
#[derive(Debug, Error)]
#[error("`{key}` {path}: {what}")]
pub struct OutputError {
    pub key: &'static str,
    pub path: PathBuf,
    pub(crate) what: &'static str,
    #[source]
    pub(crate) source: io::Error,
}

/// A file or directory that `process.user` could not write after the drop.
#[derive(Debug, Error)]
#[error("`{key}` {path}: {reason}, who writes it after the privilege drop (process.user)")]
pub struct RunAsOutputError {
    pub key: &'static str,
    pub path: PathBuf,
    pub(crate) reason: String,
}
