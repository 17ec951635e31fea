#!/usr/bin/env bash
# The test command: everything CI checks, in the order that fails fastest.
#   formatting -> clippy (warnings are errors) -> install manifests (Helm chart vs kustomize,
#   rendered by real engines) -> images built without a container engine -> the whole
#   workspace's tests (unit, property/fuzz, CRD drift, and, as root, the network-namespace tests)
#   -> every libFuzzer target for a bounded time (fuzz/run; RUSTMESH_FUZZ_SECS each, default 10)
#   -> with RUSTMESH_E2E=1 (set by .ci/run), the end-to-end suite on a local cluster (e2e/run).
set -euo pipefail
cd "$(dirname "$0")"
# Each stage's banner says how much disk is left: a full disk shows up as a linker "Bus error".
stage() { echo "== $1 (free disk: $(df -h --output=avail . | tail -1 | tr -d ' '))"; }

scripts/install-deps.sh

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "manifests/check"
manifests/check

stage "images/test"
images/test

if [ "${RUSTMESH_E2E:-}" = 1 ]; then
  # The workspace's tests that need a real API server (operator RBAC, the proxy following its
  # ConfigMap) use the local cluster, so it comes up first; the end-to-end suite itself needs
  # the mesh installed, which e2e/run does.
  stage "e2e/local-cluster up"
  e2e/local-cluster up
  stage "cargo test (all but the end-to-end suite)"
  cargo test --workspace --exclude rustmesh-e2e --locked "$@"
  stage "fuzz/run"
  fuzz/run "${RUSTMESH_FUZZ_SECS:-10}"
  stage "e2e/run (release build and images, Helm then kustomize install, the end-to-end suite)"
  e2e/run
else
  stage "cargo test"
  # The end-to-end suite's tests print why they skip (no RUSTMESH_E2E=1).
  cargo test --workspace --locked "$@"
  stage "fuzz/run"
  fuzz/run "${RUSTMESH_FUZZ_SECS:-10}"
fi
