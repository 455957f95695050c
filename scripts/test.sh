#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, as the README's second command and
# .ci/run run it (as root, on Debian 12): installs what is missing, checks
# formatting and lints, builds, installs and purges the Debian package
# (scripts/test-package.sh), then runs every test including the namespace lab
# tests (marked #[ignore] so a plain `cargo test` without root skips them
# visibly). The lab is torn down on exit, whatever happened.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $(id -u) -eq 0 ]] || { echo "test.sh: must run as root (lab namespaces, DPDK)" >&2; exit 1; }

bash scripts/setup.sh
trap 'bash scripts/lab-down.sh >/dev/null 2>&1 || true' EXIT

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test.sh: cargo build --bins (the lab tests run tlsgate-loadgen and tlsgate-impair)"
cargo build --workspace --bins --locked
echo "test.sh: the Debian package: cargo deb, dpkg -i, checks, dpkg --purge (scripts/test-package.sh)"
bash scripts/test-package.sh
echo "test.sh: cargo test (unit, in-memory, DPDK replay, namespace lab)"
cargo test --workspace --locked -- --include-ignored
