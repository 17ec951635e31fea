#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for building and testing rustmesh:
#   - iptables (iptables-restore, nft backend) and iproute2 (ip netns, veth, bridges):
#     the capture step and the network-namespace tests;
#   - util-linux (setpriv): runs the proxy as uid 1337 inside test namespaces;
#   - python3: sends UDP from a chosen source port in the DNS capture tests;
#   - umoci: packs the images without a container engine (images/test);
#   - prometheus (Debian's, 2.42 in bookworm): the end-to-end suite starts /usr/bin/prometheus
#     itself as a child process scraping the sidecars (e2e/src/prometheus.rs, the telemetry
#     scenario, e2e/tests/prometheus_harness.rs). Only the binary is wanted: the package's own
#     service is kept from starting (policy-rc.d) and disabled, so nothing is left running;
#   - make: builds jemalloc, the proxy's allocator (tikv-jemalloc-sys runs its configure + make);
#   - rustfmt and clippy, when the toolchain lacks them.
# Needs root for apt-get; without root it only reports what is missing.
set -euo pipefail

need=()
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
command -v make >/dev/null 2>&1 || need+=(make)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "install-deps: apt-get install ${need[*]}"
    apt-get update -qq
    # prometheus' postinst runs `invoke-rc.d prometheus start` (and, under systemd,
    # deb-systemd-invoke): a policy-rc.d answering 101 makes both start nothing, also on a
    # machine without systemd, where the init script would otherwise daemonize it. Made only
    # when the machine has none, removed again; stdin closed so no prompt can wait.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      made_policy=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null </dev/null || rc=$?
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || exit "$rc"
    if [[ " ${need[*]} " == *" prometheus "* ]]; then
      # Whatever the policy allowed: the packaged service neither runs now nor at boot (it
      # would hold port 9090 and scrape itself); the suite runs its own servers.
      if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
      else
        update-rc.d prometheus disable >/dev/null 2>&1 || true
        start-stop-daemon --stop --quiet --oknodo --retry 5 --pidfile /run/prometheus/prometheus.pid \
          --exec /usr/bin/prometheus || true
      fi
    fi
  else
    echo "install-deps: missing ${need[*]} (run as root to install; namespace tests and the Prometheus harness test will be skipped)" >&2
  fi
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
