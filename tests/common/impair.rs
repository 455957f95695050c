//! The lab's impairment element (`tlsgate-impair` through
//! scripts/lab-impair.sh) on one link: put on, and stopped with its counters.

use std::path::PathBuf;
use std::process::Command;

use super::{output, repo, text};

/// tlsgate-impair, built beside tlsgate by `cargo test --workspace`.
pub fn impair_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_tlsgate")).with_file_name("tlsgate-impair");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p impair` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Puts the element on `link` with the given impairment each way.
pub fn impair(link: &str, a_to_b: &str, b_to_a: &str) {
    let result = output(
        Command::new("bash")
            .arg(repo().join("scripts/lab-impair.sh"))
            .args([link, a_to_b, b_to_a])
            .env("TG_IMPAIR_BIN", impair_binary()),
    );
    assert!(result.status.success(), "lab-impair.sh: {}", text(&result.stderr));
}

/// Stops the element on `link` and returns its final counters.
pub fn stop_impairment(link: &str) -> serde_json::Value {
    let result = output(
        Command::new("bash")
            .arg(repo().join("scripts/lab-impair.sh"))
            .args(["stop", link]),
    );
    assert!(result.status.success(), "lab-impair.sh stop: {}", text(&result.stderr));
    let json = std::fs::read(format!("/tmp/tlsgate-impair-{link}.json")).expect("the element's counters");
    serde_json::from_slice(&json).expect("counters JSON")
}
