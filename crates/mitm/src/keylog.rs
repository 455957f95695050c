//! The NSS key log (`SSLKEYLOGFILE` format): one line per TLS secret of
//! either leg, `LABEL <client random hex> <secret hex>`, so Wireshark or
//! tshark can decrypt a capture of the client leg or of the server leg.
//! The file is appended to and can be reopened for log rotation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::MitmError;

/// A key log file shared by every TLS connection of the appliance.
#[derive(Debug)]
pub struct KeyLogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open(path: &Path) -> Result<File, MitmError> {
    // Secrets: readable by the owner only.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| MitmError::file(path, err))
}

impl KeyLogFile {
    pub fn open(path: &Path) -> Result<Self, MitmError> {
        Ok(KeyLogFile {
            path: path.to_owned(),
            file: Mutex::new(open(path)?),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reopens the file at its path (after it was moved away for rotation).
    pub fn reopen(&self) -> Result<(), MitmError> {
        let fresh = open(&self.path)?;
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *file = fresh;
        Ok(())
    }
}

impl rustls::KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let hex = |bytes: &[u8]| bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
        let line = format!("{label} {} {}\n", hex(client_random), hex(secret));
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A full disk must not break the connection; the line is lost.
        let _ = file.write_all(line.as_bytes());
    }

    fn will_log(&self, _label: &str) -> bool {
        true
    }
}
