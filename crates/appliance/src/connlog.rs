//! The connection log: one JSON object per line for every intercepted
//! connection, written when it ends, with its 6-tuple, its TLS details on
//! each leg (version, suite, forward secrecy, grade), the real and the forged certificate, the decision and its
//! reason, the bytes each way and how it ended. Reopened on SIGHUP so it
//! can be rotated.

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// The log file, shared by every worker.
#[derive(Debug)]
pub struct ConnectionLog {
    path: PathBuf,
    file: Mutex<LineWriter<File>>,
}

/// Why the log cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("connection log {path}: {source}")]
pub struct ConnectionLogError {
    path: PathBuf,
    source: std::io::Error,
}

fn open(path: &Path) -> Result<LineWriter<File>, ConnectionLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(LineWriter::new)
        .map_err(|source| ConnectionLogError {
            path: path.to_owned(),
            source,
        })
}

impl ConnectionLog {
    pub fn open(path: &Path) -> Result<Self, ConnectionLogError> {
        Ok(ConnectionLog {
            path: path.to_owned(),
            file: Mutex::new(open(path)?),
        })
    }

    /// Reopens the file at its path (after it was moved away for rotation).
    pub fn reopen(&self) -> Result<(), ConnectionLogError> {
        let fresh = open(&self.path)?;
        *self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    /// Appends one record; a write error (full disk) loses the line, never
    /// the connection.
    pub fn write(&self, record: &ConnectionRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = file.write_all(&line);
    }
}

/// One intercepted connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionRecord {
    /// RFC 3339 times of the client's SYN and of the end.
    pub start: String,
    pub end: String,
    pub duration_ms: u64,
    /// The 6-tuple: the port the client's SYN came in on and the 5-tuple.
    pub port: &'static str,
    pub protocol: &'static str,
    pub client: String,
    pub server: String,
    /// What was done and why.
    pub decision: &'static str,
    pub reason: String,
    pub sni: Option<String>,
    pub alpn_offered: Vec<String>,
    pub alpn: Option<String>,
    pub client_tls_version: Option<String>,
    pub client_cipher: Option<String>,
    /// Whether each leg's handshake resumed an earlier TLS session.
    pub client_resumed: bool,
    pub server_resumed: bool,
    pub server_tls_version: Option<String>,
    pub server_cipher: Option<String>,
    /// Each leg graded (see `mitm::grade`): whether its key exchange is
    /// ephemeral, and A (modern) / B (suboptimal) / C (known attacks, no
    /// forward secrecy) / F (broken).
    pub client_forward_secrecy: Option<bool>,
    pub client_grade: Option<&'static str>,
    pub server_forward_secrecy: Option<bool>,
    pub server_grade: Option<&'static str>,
    /// The ClientHello carried an outer Encrypted Client Hello extension
    /// (real or GREASE, which cannot be told apart; `sni` is then the
    /// outer, public name).
    pub ech: bool,
    pub upstream_cert_sha256: Option<String>,
    pub upstream_verified: Option<bool>,
    pub upstream_verify_error: Option<String>,
    pub forged_cert_sha256: Option<String>,
    pub forged_cache_hit: bool,
    /// TCP payload bytes received from each side.
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// Decrypted bytes relayed each way (TLS only).
    pub plaintext_client_to_server: u64,
    pub plaintext_server_to_client: u64,
    /// The inspection loop: "inspected" when the plaintext went through
    /// the box, else what happened instead (absent without a box).
    pub inspection: Option<String>,
    /// What the appliance learned from this connection (a destination it
    /// bypasses from then on, and why), if anything.
    pub learned: Option<String>,
    /// How it ended: closed, reset by client/server, server refused,
    /// server silent, server unreachable, TLS failure.
    pub ended: String,
}
