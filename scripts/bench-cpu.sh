#!/usr/bin/env bash
# rigfleet's own CPU figures as JSON lines, so the comparison with other miners can be rerun on
# any machine: for each algorithm, the calibration mining would do (every path on one thread,
# thread counts on the fastest; "measure":"calibration"), then every path on one thread and on
# every logical CPU under the real CPU device and miner (bench's rate lines). Builds nothing from
# other projects.
#
#   scripts/bench-cpu.sh [seconds per measurement, default 5] > cpu.jsonl
#   BIN=path/to/rigfleet-agent scripts/bench-cpu.sh 5     # a binary built elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
bin="${BIN:-target/release/rigfleet-agent}"
if [ ! -x "$bin" ]; then
    cargo build --release -p rigfleet-agent >&2
fi
cores="$(nproc)"
echo "{\"measure\":\"machine\",\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//;s/"/\\"/g')\",\"logical_cpus\":$cores,\"date\":\"$(date -u +%FT%TZ)\"}"
for algo in sha256d scrypt; do
    "$bin" bench --algo "$algo" --path all --threads 1 --seconds "$seconds" --json
    if [ "$cores" -gt 1 ]; then
        # The calibration line is printed again; the rate lines are for all logical CPUs.
        "$bin" bench --algo "$algo" --path all --threads "$cores" --seconds "$seconds" --json |
            grep -v '"measure":"calibration"'
    fi
done
