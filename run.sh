#!/usr/bin/env bash
# The main job: build every part (release), regenerate the CRDs, check the example Istio
# configuration with the operator's parser, and then, as root, the demo: a local single-node
# Kubernetes (e2e/local-cluster), the images (no container engine), the mesh installed with
# kustomize, the bookinfo-like sample in namespace bookinfo, requests following a
# VirtualService, and a sidecar's listener table.
#
#   ./run.sh             all of it (the demo only as root; without root it says so and stops)
#   ./run.sh --no-demo   only the build and the checks (also RUSTMESH_DEMO=0)
set -euo pipefail
cd "$(dirname "$0")"

demo=${RUSTMESH_DEMO:-1}
for arg in "$@"; do
  case $arg in
    --no-demo) demo=0 ;;
    *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done

cargo build --release --workspace --locked
cargo run --release --locked -q -p rustmesh-api --bin crdgen
echo
echo "Built:"
for bin in operator webhook proxy rustmeshctl testapp crdgen; do
  [ -x "target/release/$bin" ] && printf '  %-11s %s\n' "$bin" "$(du -h "target/release/$bin" | cut -f1)"
done
echo
echo "Checking the example Istio YAML (api/tests/fixtures/valid):"
cargo run --release --locked -q -p rustmesh-api --bin istio-validate -- api/tests/fixtures/valid/*.yaml

[ "$demo" = 1 ] || exit 0
if [ "$(id -u)" != 0 ]; then
  echo
  echo "The demo (local cluster, install, sample, traffic) needs root: run ./run.sh as root, or ./run.sh --no-demo."
  exit 0
fi
echo
echo "== Demo: local cluster (e2e/local-cluster up; the first time builds Kubernetes 1.20.2 from Debian's source, ~10 min)"
e2e/local-cluster up
echo "== images (images/build) and install (e2e/install: kustomize overlays/default)"
images/build operator webhook proxy testapp
e2e/install --no-images
target/release/demo
echo
echo "The cluster stays up: e2e/local-cluster status | down. Tests: ./test.sh (RUSTMESH_E2E=1 adds the end-to-end suite, e2e/run)."
