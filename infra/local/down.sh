#!/usr/bin/env bash
# Stop the stack infra/local/up.sh started: Prometheus, the Ray head, the S3 server.
#   infra/local/down.sh            stop; keep the S3 data (the next up.sh serves it again) and logs
#   infra/local/down.sh --purge    stop and delete the state dir and Ray's temp dir
# Only the processes up.sh recorded are signalled: each runs in its own session, and its pid
# file names a path its command line must contain, so a reused pid is never touched.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${AURALFLOW_STACK_DIR:-$REPO/.local-stack}
PURGE=
case ${1:-} in
  --purge) PURGE=1 ;;
  "") ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { echo "down.sh: $*" >&2; }

# ours PID MARKER: the process PID is alive and is the one up.sh started.
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"; }

# stop NAME GRACE: SIGTERM to the leader (Ray's `ray start --block` then drains and stops its
# own children), up to GRACE seconds, then SIGKILL to whatever is left of its process group.
stop() {
  local name=$1 grace=$2 pidfile=$STATE/$1.pid pid marker
  [ -f "$pidfile" ] || return 0
  { read -r pid; read -r marker; } <"$pidfile"
  if ours "$pid" "$marker"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do
      ours "$pid" "$marker" || break
      sleep 0.1
    done
  fi
  if ours "$pid" "$marker"; then
    kill -KILL -- "-$pid" 2>/dev/null || true
  else
    # Leftovers of the group whose leader is gone (the session's group id is the leader's pid).
    for p in $(pgrep -g "$pid" 2>/dev/null || true); do
      if ours "$p" "$marker"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
  fi
  rm -f "$pidfile"
  log "stopped $name"
}

[ -d "$STATE" ] || { log "nothing recorded in $STATE"; exit 0; }
stop prometheus 15
stop ray 45
stop weed 15
rm -f "$STATE/env" "$STATE/ports"

if [ -n "$PURGE" ]; then
  [ -f "$STATE/ray.tmp" ] && rm -rf -- "$(cat "$STATE/ray.tmp")"
  rm -rf -- "$STATE"
  log "removed $STATE"
fi
