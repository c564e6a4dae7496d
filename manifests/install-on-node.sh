#!/bin/sh
# Runs in the installer DaemonSet's pod (privileged, host PID namespace, the node's / at /host):
# copies skiffd and skiff-monitor onto the node, installs the systemd unit and starts it in the
# node's namespaces, then sleeps. skiffd itself runs on the node under systemd, not in this pod,
# so that deleting the DaemonSet never stops a container.
set -eu
HOST=${HOST_ROOT:-/host}
[ -d "$HOST/etc" ] || { echo "install-on-node: the node's root is not mounted at $HOST" >&2; exit 1; }
install -D -m 0755 /opt/skiff/bin/skiffd "$HOST/usr/local/bin/skiffd"
install -D -m 0755 /opt/skiff/bin/skiff-monitor "$HOST/usr/local/bin/skiff-monitor"
install -D -m 0644 /opt/skiff/skiffd.service "$HOST/etc/systemd/system/skiffd.service"
nsenter --target 1 --mount --uts --ipc --net --pid -- sh -c \
    'apt-get install -y -q nftables iproute2 libseccomp2 >/dev/null 2>&1 || true;
     systemctl daemon-reload && systemctl enable skiffd.service && systemctl restart skiffd.service'
echo "install-on-node: skiffd installed and started on $(cat "$HOST/etc/hostname" 2>/dev/null || hostname)"
exec sleep infinity
