#!/usr/bin/env bash
# Builds the libFuzzer targets (coverage-instrumented, on the stable toolchain: no cargo-fuzz,
# no nightly) and runs each for SECONDS (default 20) from its committed corpus
# (fuzz/corpus/<target>/, read-only: new inputs go to a temp dir). A crash, a panic, a leak of
# a timeout (10 s per input) or an input over 2 GiB of memory fails the run, and the input
# that did it is left in fuzz/artifacts/<target>/. Needs root for the unpack target (devices,
# ownership), as the rest of the tests.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(reference manifest unpack config monitor_protocol cni cri_validate)
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-target}
# With an explicit --target the flags reach only the targets, not build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
# The workspace's lock file pins every shared dependency; cargo adds libFuzzer's.
cp ../Cargo.lock Cargo.lock
cargo build --release --bins --target "$host"
for t in "${targets[@]}"; do
    work=$(mktemp -d)
    mkdir -p "artifacts/$t" "corpus/$t"
    echo "fuzz: $t for ${secs}s"
    "$CARGO_TARGET_DIR/$host/release/$t" "$work" "corpus/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>"$work.log" || {
        tail -n 40 "$work.log" >&2
        echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)" >&2
        exit 1
    }
    grep -E '^stat::number_of_executed_units|^Done' "$work.log" | sed "s/^/fuzz: $t: /" || true
    rm -rf "$work" "$work.log"
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
