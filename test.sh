#!/usr/bin/env bash
# The test command: everything CI checks, in the order that fails fastest.
#   formatting -> clippy (warnings are errors) -> the whole workspace's tests
# (unit, property/fuzz, CRD drift, and, as root, the network-namespace tests).
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked "$@"
