#!/usr/bin/env bash
# Builds skiff and runs every test: unit tests and the integration tests in tests/, which run
# the real skiffd against the real kernel, as root. On a fresh Debian 12 machine it first
# installs the packages the tests need and starts the test registry on 127.0.0.1:5000
# (../shared/testimages/registry-up); both steps are skipped when already done.
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "test.sh: the tests need root" >&2; exit 1; }

need=()
for pkg in libseccomp-dev pkg-config g++ nftables iproute2 containernetworking-plugins busybox-static curl openssl docker-registry skopeo python3 python3-yaml e2fsprogs; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null
fi
registry=${SKIFF_TEST_REGISTRY:-127.0.0.1:5000}
if ! curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
    REGISTRY_ADDR=$registry ../shared/testimages/registry-up
fi

# Formatting and lints first: a failure here fails the run before the long tests.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --features skiff-cri-server/failpoints -- -D warnings

# Every fuzz target for a bounded time (fuzz/README.md); a crash fails the run.
fuzz/run.sh "${SKIFF_FUZZ_SECONDS:-20}"

# The tests' skiffd has failpoints (SKIFF_FAILPOINTS); release builds never do.
cargo build --workspace --bins --locked --features skiff-cri-server/failpoints
cargo test --workspace --locked --no-fail-fast --features skiff-cri-server/failpoints -- --test-threads="${SKIFF_TEST_THREADS:-4}"
