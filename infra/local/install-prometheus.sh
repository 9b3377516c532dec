#!/usr/bin/env bash
# Install Debian's `prometheus` package (prometheus + promtool) where it is missing.
# The real-scrape tests and infra/local/up.sh need the binary; nothing here downloads from
# anywhere but the distribution's own archive. Exit 0: present or installed; 1: cannot install.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-prometheus.sh: prometheus is missing and installing it needs root (apt-get install prometheus)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus.sh: prometheus is missing and there is no apt-get here; install it from your distribution" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends prometheus

# On hosts with systemd the package starts a system-wide service on :9090; the project runs
# its own instances on free ports, so leave none behind.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus
fi
command -v prometheus >/dev/null 2>&1
