//! Why the appliance's policy, TLS material, outputs or privilege drop
//! could not be set up: the error of [`crate::preflight()`] (`tlsgate
//! check`), of a reload, and (wrapped) of the data plane's start.

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
    Output(#[from] crate::preflight::OutputError),
    #[error(transparent)]
    RunAsOutput(#[from] crate::preflight::RunAsOutputError),
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
