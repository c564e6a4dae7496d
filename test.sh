#!/usr/bin/env bash
# Builds skiff and runs every test: unit tests and the integration tests in tests/, which run
# the real skiffd against the real kernel. Needs root and the test registry on 127.0.0.1:5000
# (../shared/testimages/registry-up starts it). .ci/run installs the packages and calls this.
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "test.sh: the tests need root" >&2; exit 1; }
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast -- --test-threads="${SKIFF_TEST_THREADS:-4}"
