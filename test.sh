#!/usr/bin/env bash
# The test command: everything CI checks, in the order that fails fastest.
#   formatting -> clippy (warnings are errors) -> install manifests (Helm chart vs kustomize,
#   rendered by real engines) -> images built without a container engine -> the whole
#   workspace's tests (unit, property/fuzz, CRD drift, and, as root, the network-namespace tests)
#   -> with RUSTMESH_E2E=1 (set by .ci/run), the end-to-end suite on a local cluster (e2e/run).
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
# The end-to-end suite's tests skip here (they need a cluster); e2e/run runs them for real below.
env -u RUSTMESH_E2E cargo test --workspace --locked "$@"

if [ "${RUSTMESH_E2E:-}" = 1 ]; then
  echo "== e2e/run (local cluster, release build and images, Helm then kustomize install, the end-to-end suite)"
  e2e/run
fi
