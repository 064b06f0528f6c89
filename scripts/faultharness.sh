#!/usr/bin/env bash
# The fault harness, long version: PostgreSQL's connection cut 24 times for 0.2 s and 24 times
# for 10 s while 20 agents catch up on an hour of samples; 100 kill -9 of the server during
# ingest and config writes on SQLite and on PostgreSQL; agent clocks skewed by ±1 h and ±1 day;
# a rig removed; disk full on the server and on the agent (needs root: a tmpfs is mounted);
# one agent at 100× the rate beside 20 normal ones. Every scenario ends by comparing what each
# agent sent with what the database holds; the table at the end goes to docs/BENCHMARKS.md.
# The e2e tests `fault_short::*` run short versions of the same scenarios in CI.
# Usage: scripts/faultharness.sh [faultharness flags, e.g. --only kill --kills 20]
# FAULTHARNESS_KEEP=1 keeps the work folder (logs, databases, reports).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p rigfleet-server -p rigfleet-agent -p rigfleet-tests --bin rigfleet-server --bin rigfleet-agent --bin faultharness
exec target/release/faultharness "$@"
