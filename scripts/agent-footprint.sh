#!/usr/bin/env bash
# Agent footprint: RSS while mining (one CPU thread) and idle, CPU time of the agent apart from
# its hashing threads (named cpu-<algo>-<n>), and binary size. Starts a release server, a test
# pool and one enrolled agent on 127.0.0.1. Usage: scripts/agent-footprint.sh [seconds per phase]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
target=${CARGO_TARGET_DIR:-target}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p rigfleet-server -p rigfleet-agent
fi
bin=$target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=18181
"$bin/rigfleet-agent" pool --listen 127.0.0.1:0 --algo sha256d --stats-interval-secs 3600 >"$work/pool.log" 2>&1 &
pids+=($!)
"$bin/rigfleet-server" --data-dir "$work/server" --listen 127.0.0.1:$port >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q "stratum+tcp" "$work/pool.log" && curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
pool=$(grep -o 'stratum+tcp://[0-9.:]*' "$work/pool.log" | head -1)
admin=$("$bin/rigfleet-server" --data-dir "$work/server" api-token create --name footprint --scope admin)
token=$("$bin/rigfleet-server" --data-dir "$work/server" token create --max-uses 1 | grep '^rf1\.')
"$bin/rigfleet-agent" enroll --server "http://127.0.0.1:$port" --token "$token" --state-dir "$work/agent" >/dev/null
rig=$(curl -sf -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/api/v1/rigs" | jq -r '.items[0].id')
put_config() {
  curl -sf -X PUT -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d "$1" "http://127.0.0.1:$port/api/v1/rigs/$rig/config" >/dev/null
}
put_config "{\"algorithm\":\"sha256d\",\"pools\":[{\"url\":\"$pool\",\"user\":\"w.footprint\",\"password\":\"x\"}],\"devices\":[{\"device_id\":\"cpu\",\"threads\":1}]}"
"$bin/rigfleet-agent" run --state-dir "$work/agent" --api-listen off >"$work/agent.log" 2>&1 &
agent=$!
pids+=($agent)
hz=$(getconf CLK_TCK)

# ticks of all threads, and of threads whose name starts with cpu- (hashing)
ticks() {
  local total=0 hashing=0
  for t in /proc/$agent/task/*; do
    local stat; stat=$(cat "$t/stat" 2>/dev/null) || continue
    local name=${stat#*(}; name=${name%%)*}
    local rest=${stat##*) }
    read -r -a f <<<"$rest"
    local n=$(( f[11] + f[12] ))
    total=$((total + n))
    [[ $name == cpu-* ]] && hashing=$((hashing + n))
  done
  echo "$total $hashing"
}
measure() {
  local label=$1
  sleep 10 # settle
  read -r t0 h0 < <(ticks)
  local start; start=$(date +%s.%N)
  local peak=0
  for _ in $(seq "$secs"); do
    sleep 1
    local rss; rss=$(awk '/VmRSS/{print $2}' /proc/$agent/status)
    (( rss > peak )) && peak=$rss
  done
  read -r t1 h1 < <(ticks)
  local el; el=$(echo "$(date +%s.%N) - $start" | bc -l)
  python3 - "$label" "$t0" "$h0" "$t1" "$h1" "$el" "$hz" "$peak" <<'PY'
import sys
label,t0,h0,t1,h1,el,hz,peak=sys.argv[1],*map(float,sys.argv[2:])
other=((t1-t0)-(h1-h0))/hz/el*100
hashing=(h1-h0)/hz/el*100
print(f"{label}: RSS peak {peak/1024:.1f} MiB; agent CPU apart from hashing {other:.2f}% of one core; hashing threads {hashing:.0f}%")
PY
}
measure "mining (1 thread, telemetry every 10 s)"
put_config '{"algorithm":"","pools":[],"devices":[]}'
measure "idle (connected, no mining)"
ls -l "$bin/rigfleet-agent" | awk '{printf "binary size: %.1f MB (release profile; the dist profile is smaller)\n", $5/1e6}'
