#!/usr/bin/env bash
# Builds skiff from this checkout, installs it, and starts skiffd with its built-in defaults.
#   sudo manifests/install.sh            build, install to $PREFIX/bin (default /usr/local), start
#   sudo manifests/install.sh --no-start install only
# With systemd, skiffd runs as the skiffd.service unit; without it, in the background with its
# log in /var/log/skiffd.log and its pid in /run/skiffd.pid.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
start=1
[ "${1:-}" = "--no-start" ] && start=0
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in libseccomp-dev pkg-config nftables iproute2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null
fi

cargo build --release --locked --bins
install -D -m 0755 target/release/skiffd "$PREFIX/bin/skiffd"
install -D -m 0755 target/release/skiff-monitor "$PREFIX/bin/skiff-monitor"
install -d -m 0755 /etc/skiff
"$PREFIX/bin/skiffd" config default >/etc/skiff/config.toml.default
"$PREFIX/bin/skiffd" check || echo "install.sh: skiffd check reports missing features (see above)" >&2

[ $start = 1 ] || exit 0
if [ -d /run/systemd/system ]; then
    sed "s|/usr/local/bin|$PREFIX/bin|g" manifests/skiffd.service >/etc/systemd/system/skiffd.service
    systemctl daemon-reload
    systemctl enable --now skiffd.service
    echo "install.sh: skiffd started (systemctl status skiffd)"
else
    if [ -f /run/skiffd.pid ] && kill -0 "$(cat /run/skiffd.pid)" 2>/dev/null; then
        echo "install.sh: stopping the running skiffd ($(cat /run/skiffd.pid))"
        kill "$(cat /run/skiffd.pid)"
        for _ in $(seq 100); do kill -0 "$(cat /run/skiffd.pid)" 2>/dev/null || break; sleep 0.1; done
    fi
    nohup "$PREFIX/bin/skiffd" >>/var/log/skiffd.log 2>&1 </dev/null &
    echo $! >/run/skiffd.pid
    for _ in $(seq 100); do [ -S /run/skiff/skiff.sock ] && break; sleep 0.1; done
    [ -S /run/skiff/skiff.sock ] || { echo "install.sh: skiffd did not start, see /var/log/skiffd.log" >&2; exit 1; }
    echo "install.sh: skiffd started (pid $(cat /run/skiffd.pid), log /var/log/skiffd.log, socket /run/skiff/skiff.sock)"
fi
