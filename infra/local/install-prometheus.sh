#!/usr/bin/env bash
# Install Debian's `prometheus` package (prometheus + promtool) where it is missing.
# The real-scrape tests and infra/local/up.sh need the binary. Exit 0: present or installed;
# 1: cannot install.
set -euo pipefail

"$(dirname "$0")/install-tool.sh" prometheus prometheus

# On hosts with systemd the package starts a system-wide service on :9090; the project runs
# its own instances on free ports, so leave none behind.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus
fi
command -v prometheus >/dev/null 2>&1
