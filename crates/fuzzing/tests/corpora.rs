//! Replays every input of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through the target's function, on the
//! stable toolchain: what the fuzzers found once keeps passing in CI.
//!
//! `cargo run -p fuzzing --example write_seeds` regenerates the `seed-*`
//! files of the corpora.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fuzzing::{files_in, fuzz_dir};

fn replay(target: &str) {
    let (_, run) = fuzzing::TARGETS.into_iter().find(|(name, _)| *name == target).unwrap();
    let corpus = files_in(&fuzz_dir().join("corpus").join(target));
    assert!(
        corpus
            .iter()
            .any(|path| path.file_name().unwrap().to_string_lossy().starts_with("seed-")),
        "no seeds in fuzz/corpus/{target}"
    );
    let regressions = files_in(&fuzz_dir().join("regressions").join(target));
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap();
        // A panic names the input: catch it to add the path.
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{target} panicked on {}: {message}", path.display());
        }
    }
}

#[test]
fn wire_corpus() {
    replay("wire");
}

#[test]
fn engine_corpus() {
    replay("engine");
}

#[test]
fn tls_hello_corpus() {
    replay("tls_hello");
}

#[test]
fn config_corpus() {
    replay("config");
}

/// Every target has a corpus and a test here.
#[test]
fn every_target_is_replayed() {
    let names: Vec<&str> = fuzzing::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["wire", "engine", "tls_hello", "config"]);
    for name in names {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}
