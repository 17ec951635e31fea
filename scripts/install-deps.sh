#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for building and testing rustmesh:
#   - iptables (iptables-restore, nft backend) and iproute2 (ip netns, veth, bridges):
#     the capture step and the network-namespace tests;
#   - util-linux (setpriv): runs the proxy as uid 1337 inside test namespaces;
#   - python3: sends UDP from a chosen source port in the DNS capture tests;
#   - umoci: packs the images without a container engine (images/test);
#   - rustfmt and clippy, when the toolchain lacks them.
# Needs root for apt-get; without root it only reports what is missing.
set -euo pipefail

need=()
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v umoci >/dev/null 2>&1 || need+=(umoci)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "install-deps: apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "install-deps: missing ${need[*]} (run as root to install; namespace tests will be skipped)" >&2
  fi
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
