#!/usr/bin/env bash
# Install Debian package PACKAGE where command TOOL is missing:  install-tool.sh TOOL PACKAGE
# A TOOL with a '/' is a file the package ships (for data packages, which have no command).
# Nothing is downloaded from anywhere but the distribution's own archive.
# Exit 0: present or installed; non-zero: cannot install (not root, no apt-get, apt failed).
set -euo pipefail
tool=$1 package=$2

present() {
  case $tool in
    */*) [ -e "$tool" ] ;;
    *) command -v "$tool" >/dev/null 2>&1 ;;
  esac
}

if present; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-tool.sh: $tool is missing and installing it needs root (apt-get install $package)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-tool.sh: $tool is missing and there is no apt-get here; install $package from your distribution" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "$package"
present
