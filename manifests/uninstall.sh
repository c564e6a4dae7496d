#!/usr/bin/env bash
# Stops skiffd and removes its binaries and unit. Keeps /etc/skiff and the data in
# /var/lib/skiff unless --purge is given. Running containers are not stopped by this script:
# stop them first (crictl stopp/rmp) if they must go.
set -euo pipefail
PREFIX=${PREFIX:-/usr/local}
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }
if [ -d /run/systemd/system ] && [ -f /etc/systemd/system/skiffd.service ]; then
    systemctl disable --now skiffd.service || true
    rm -f /etc/systemd/system/skiffd.service
    systemctl daemon-reload
elif [ -f /run/skiffd.pid ]; then
    kill "$(cat /run/skiffd.pid)" 2>/dev/null || true
    rm -f /run/skiffd.pid
fi
rm -f "$PREFIX/bin/skiffd" "$PREFIX/bin/skiff-monitor"
if [ "${1:-}" = "--purge" ]; then
    rm -rf /etc/skiff /var/lib/skiff
fi
echo "uninstall.sh: done"
