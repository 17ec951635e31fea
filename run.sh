#!/usr/bin/env bash
# The main job. For now: build every part in release mode, regenerate the CRDs, and check the
# example Istio configuration with the same parser the operator uses. (The end-to-end demo on a
# local cluster replaces this once the e2e provider lands.)
set -euo pipefail
cd "$(dirname "$0")"

cargo build --release --workspace --locked
cargo run --release --locked -q -p rustmesh-api --bin crdgen
echo
echo "Built:"
for bin in operator webhook proxy crdgen; do
  [ -x "target/release/$bin" ] && printf '  %-9s %s\n' "$bin" "$(du -h "target/release/$bin" | cut -f1)"
done
echo
echo "Checking the example Istio YAML (api/tests/fixtures/valid):"
cargo run --release --locked -q -p rustmesh-api --bin istio-validate -- api/tests/fixtures/valid/*.yaml
