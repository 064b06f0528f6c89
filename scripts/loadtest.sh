#!/usr/bin/env bash
# Load benchmark of the server: 1,000 simulated rigs with 8 devices, telemetry every 10 s, for
# 10 minutes, on SQLite and on PostgreSQL; a pool change pushed to every rig; then a kill -9
# reconnect storm. Prints the figures docs/BENCHMARKS.md and the README report.
# Usage: scripts/loadtest.sh [extra loadtest flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p rigfleet-server -p rigfleet-agent -p rigfleet-tests --bin rigfleet-server --bin rigfleet-agent --bin loadtest
for backend in sqlite postgres; do
  target/release/loadtest --backend "$backend" --rigs 1000 --devices 8 --interval 10 --seconds 600 --storm --push "$@"
done
