#!/bin/bash
# Runs in the installer DaemonSet's pod (privileged, host PID namespace, the node's / at /host):
# copies skiffd and skiff-monitor onto the node, installs the systemd unit and the configuration
# from the ConfigMap (mounted at /opt/skiff/config), starts skiffd in the node's namespaces, then
# sleeps. skiffd itself runs on the node under systemd, not in this pod, so that deleting the
# DaemonSet never stops a container. Every failure stops the pod with a message (CrashLoopBackOff
# shows it); nothing is ignored.
set -euo pipefail
HOST=${HOST_ROOT:-/host}
CONFIG=${CONFIG_DIR:-/opt/skiff/config}
log() { echo "install-on-node: $*"; }
[ -d "$HOST/etc" ] || { log "the node's root is not mounted at $HOST" >&2; exit 1; }
[ -d "$HOST/run/systemd/system" ] || { log "the node does not run systemd: install with manifests/install.sh instead" >&2; exit 1; }

install -D -m 0755 /opt/skiff/bin/skiffd "$HOST/usr/local/bin/skiffd.new"
install -D -m 0755 /opt/skiff/bin/skiff-monitor "$HOST/usr/local/bin/skiff-monitor.new"
# Renamed into place: a running monitor keeps its (old) binary, new containers get the new one.
mv -f "$HOST/usr/local/bin/skiffd.new" "$HOST/usr/local/bin/skiffd"
mv -f "$HOST/usr/local/bin/skiff-monitor.new" "$HOST/usr/local/bin/skiff-monitor"
install -D -m 0644 /opt/skiff/skiffd.service "$HOST/etc/systemd/system/skiffd.service"
if [ -f "$CONFIG/config.toml" ]; then
    /opt/skiff/bin/skiffd config check "$CONFIG/config.toml"
    install -D -m 0644 "$CONFIG/config.toml" "$HOST/etc/skiff/config.toml"
    log "configuration from the ConfigMap installed as /etc/skiff/config.toml"
fi

nsenter --target 1 --mount --uts --ipc --net --pid -- bash -euo pipefail -c '
    need=()
    for p in nftables iproute2 libseccomp2; do
        dpkg-query -W -f="\${Status}" "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "install-on-node: installing ${need[*]} on the node"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${need[@]}"
    fi
    systemctl daemon-reload
    systemctl enable skiffd.service
    systemctl restart skiffd.service
    systemctl is-active --quiet skiffd.service'
log "skiffd installed and started on $(cat "$HOST/etc/hostname" 2>/dev/null || hostname)"
exec sleep infinity
