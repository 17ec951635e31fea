#!/usr/bin/env bash
# The test command: everything CI checks, in the order that fails fastest.
#   formatting -> clippy (warnings are errors) -> install manifests (Helm chart vs kustomize,
#   rendered by real engines) -> images built without a container engine -> the whole
#   workspace's tests (unit, property/fuzz, CRD drift, and, as root, the network-namespace tests).
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== manifests/check"
manifests/check

echo "== images/test"
images/test

echo "== cargo test"
cargo test --workspace --locked "$@"
