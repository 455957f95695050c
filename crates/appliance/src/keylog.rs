//! The key log (`log.keylog`, the NSS `SSLKEYLOGFILE` format of
//! [`mitm::keylog`]): every TLS secret of either leg, so Wireshark or
//! tshark can decrypt a capture of the client leg or of the server leg.
//! rustls hands each secret to [`KeyLog`] on the worker, which queues the
//! line for the writer thread ([`crate::writer`]) that owns the file. The
//! file is readable by its owner only, appended to, and reopened on SIGHUP
//! for log rotation.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::writer::{Opened, WriterHandle};

/// The key log every TLS connection of the appliance writes to.
#[derive(Debug)]
pub struct KeyLog {
    path: PathBuf,
    writer: WriterHandle,
}

/// Why the key log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("key log {path}: {source}")]
pub struct KeyLogError {
    path: PathBuf,
    source: std::io::Error,
}

fn open(path: &Path) -> Result<File, KeyLogError> {
    // Secrets: readable by the owner only.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| KeyLogError {
            path: path.to_owned(),
            source,
        })
}

impl KeyLog {
    /// Opens the file (here, with this thread's credentials) and hands it
    /// to `writer`, which writes the records from then on.
    pub fn open(path: &Path, writer: &WriterHandle) -> Result<KeyLog, KeyLogError> {
        let (log, file) = KeyLog::prepare(path, writer)?;
        writer.open(file);
        Ok(log)
    }

    /// Opens the file, not handed to `writer` yet (a reload hands it over
    /// once everything else loaded).
    pub(crate) fn prepare(path: &Path, writer: &WriterHandle) -> Result<(KeyLog, Opened), KeyLogError> {
        let file = Opened::KeyLog(open(path)?);
        let log = KeyLog {
            path: path.to_owned(),
            writer: writer.clone(),
        };
        Ok((log, file))
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reopens the file at its path (after it was moved away for rotation).
    pub fn reopen(&self) -> Result<(), KeyLogError> {
        self.writer.open(Opened::KeyLog(open(&self.path)?));
        Ok(())
    }
}

impl rustls::KeyLog for KeyLog {
    /// Queues the line, never waiting: a full queue drops it (counted in
    /// `keylog_records_dropped`).
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        self.writer
            .key_log_line(mitm::keylog::nss_line(label, client_random, secret).into_bytes());
    }

    fn will_log(&self, _label: &str) -> bool {
        true
    }
}
