//! The real peers of the termination mode (tests/lab/terminate-peers.sh:
//! nginx reading PROXY, HAProxy, a lab PKI in the server namespace), for
//! tests/lab_terminate.rs and tests/lab_starttls_lossy.rs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{await_log_line, output, repo, text};

/// The backends of tests/lab/terminate-peers.sh and their lab PKI, stopped
/// on drop.
pub struct TerminatePeers(pub PathBuf);

impl TerminatePeers {
    pub fn start(dir: PathBuf) -> TerminatePeers {
        let started = output(
            Command::new("bash")
                .arg(repo().join("tests/lab/terminate-peers.sh"))
                .arg("start")
                .arg(&dir),
        );
        assert!(
            started.status.success(),
            "terminate-peers.sh: {}",
            text(&started.stderr)
        );
        TerminatePeers(dir)
    }

    /// What the clients trust: the lab root CA.
    pub fn root_ca(&self) -> PathBuf {
        self.0.join("pki/root.pem")
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        self.0.join("pki").join(file)
    }

    pub fn file(&self) -> Vec<u8> {
        std::fs::read(self.0.join("www/file.bin")).expect("backend file")
    }

    /// Waits up to 10 s for a line of the backend log `log` (pp-v2.log,
    /// pp-v1.log, pp-h2.log, haproxy.log) containing `needle`.
    pub fn await_logged(&self, log: &str, needle: &str) -> String {
        await_log_line(&self.0.join(log), needle, Duration::from_secs(10))
    }
}

impl Drop for TerminatePeers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/lab/terminate-peers.sh"))
            .arg("stop")
            .arg(&self.0)
            .output();
    }
}
