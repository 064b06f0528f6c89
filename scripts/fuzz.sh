#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ one after the other and prints, per target, the
# executions done, the rate and whether it crashed (issue 11: at least 10 million each).
#
#   scripts/fuzz.sh                         # every target, 10,000,000 executions each
#   FUZZ_RUNS=100000 scripts/fuzz.sh        # a quick pass
#   FUZZ_SECONDS=600 scripts/fuzz.sh        # time-bounded instead (per target)
#   scripts/fuzz.sh stratum_job cgminer_api # some targets only
#
# No nightly toolchain is needed: cargo-fuzz's `-Z` flags are accepted by stable rustc with
# RUSTC_BOOTSTRAP=1. Targets are built with debug assertions and overflow checks (`-a`), so an
# arithmetic overflow on hostile input is a crash as it is in the test profile; the sanitizer is
# off by default (FUZZ_SANITIZER=address to turn ASan on): the decoders are safe Rust, and a
# panic is what is looked for, at about twice the speed.
#
# Each target runs in one process, one thread (libFuzzer's default: no -jobs/-workers fork), so
# it takes one core. New inputs the fuzzer finds go to fuzz/target/fuzz-work/<target> (ignored by
# git); the committed seeds in fuzz/corpus/<target> are read, never written. A crash leaves its
# input in fuzz/artifacts/<target>/: add it to fuzz/corpus/<target>/ with the fix, and the stable
# corpus replay tests keep it fixed. Logs: fuzz/target/fuzz-logs/<target>.log.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

runs=${FUZZ_RUNS:-10000000}
seconds=${FUZZ_SECONDS:-0}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "Installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

if [ "$seconds" -gt 0 ]; then
    limit=(-max_total_time="$seconds")
    runs=0
    echo "Fuzzing ${targets[*]}: ${seconds} s each (sanitizer: $sanitizer)" >&2
else
    limit=(-runs="$runs")
    echo "Fuzzing ${targets[*]}: $runs executions each (sanitizer: $sanitizer)" >&2
fi

# Build first, so the wall times below are fuzzing only.
for target in "${targets[@]}"; do
    cargo fuzz build -s "$sanitizer" -a "$target"
done

mkdir -p target/fuzz-logs
results=()
failed=0
for target in "${targets[@]}"; do
    work="target/fuzz-work/$target"
    log="target/fuzz-logs/$target.log"
    mkdir -p "$work" "artifacts/$target"
    echo "== $target" >&2
    start=$(date +%s.%N)
    status=0
    cargo fuzz run -s "$sanitizer" -a "$target" "$work" "corpus/$target" -- \
        "${limit[@]}" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1 || status=$?
    end=$(date +%s.%N)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    corp=$(grep -oE 'corp: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    if [ "$status" -eq 0 ] && ! grep -qE '^==[0-9]+== ERROR|panicked at|deadly signal' "$log"; then
        verdict="no crash"
    else
        failed=1
        artifact=$(grep -oE 'artifacts/[^ ]+' "$log" | tail -n 1 || true)
        verdict="CRASH (exit $status) ${artifact:-see $log}"
    fi
    line=$(printf '%-14s %10s %8s %6s %6s %7s  %s' "$target" "${execs:-?}" "${rate:-?}" "$wall" \
        "${cov:-?}" "${corp:-?}" "$verdict")
    echo "$line" >&2
    results+=("$line")
done

echo
printf '%-14s %10s %8s %6s %6s %7s  %s\n' target executions exec/s wall_s edges corpus result
printf '%s\n' "${results[@]}"
exit "$failed"
