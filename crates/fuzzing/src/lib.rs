//! The bodies of tlsgate's fuzz targets (`fuzz/fuzz_targets/*.rs` are
//! one-line `fuzz_target!` wrappers around them), so that the stable test
//! `tests/corpora.rs` can replay every corpus and regression input through
//! exactly the same code in CI.
//!
//! Each function takes any bytes and either returns or panics; a panic is a
//! finding (a bug in the project, or a broken invariant asserted here).

#![forbid(unsafe_code)]

mod config;
mod engine;
/// The in-memory lab of the appliance's own tests, reused as it is.
#[path = "../../appliance/tests/harness/mod.rs"]
mod harness;
mod pki;
mod tls_hello;
mod wire;

pub use config::config;
pub use engine::engine;
pub use tls_hello::tls_hello;
pub use wire::wire;

/// A fuzz target's body: any bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the names of `fuzz/fuzz_targets/*.rs` and of
/// the `fuzz/corpus/` and `fuzz/regressions/` directories).
pub const TARGETS: [(&str, Target); 4] = [
    ("wire", wire),
    ("engine", engine),
    ("tls_hello", tls_hello),
    ("config", config),
];

/// The repository's `fuzz/` folder (corpora and regression inputs).
pub fn fuzz_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted by name; none if it cannot be read.
pub fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}
