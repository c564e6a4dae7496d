#!/bin/bash
# Runs in the installer DaemonSet's pod (privileged, host PID namespace, the node's / at /host):
# copies skiffd and skiff-monitor onto the node, installs the systemd unit, the configuration
# from the ConfigMap (mounted at /opt/skiff/config) and /etc/crictl.yaml (when absent), starts
# skiffd in the node's namespaces, then sleeps. skiffd itself runs on the node under systemd,
# not in this pod, so that deleting the DaemonSet never stops a container. Every failure stops
# the pod with a message naming what failed (kubectl logs; CrashLoopBackOff shows it); nothing
# is ignored.
#
# Environment (the DaemonSet sets none of these; tests and unusual nodes do):
#   HOST_ROOT=/host               where the node's / is mounted in this pod
#   CONFIG_DIR=/opt/skiff/config  the ConfigMap's directory (config.toml)
#   NODE_PID=1                    the process whose namespaces are the node's (hostPID: its init)
#   NODE_START=systemd            systemd: install nftables/iproute2/libseccomp2 if missing, then
#                                 enable and restart skiffd.service in the node's namespaces;
#                                 none: install the files only (after checking that the node's
#                                 namespaces can be entered) and start nothing
# Only binaries of the image run here (bash, cp, mv, chmod, mkdir, nsenter, skiffd): busybox's
# applets do. The commands run through nsenter are the node's own.
set -eEuo pipefail
HOST=${HOST_ROOT:-/host}
CONFIG=${CONFIG_DIR:-/opt/skiff/config}
NODE_PID=${NODE_PID:-1}
NODE_START=${NODE_START:-systemd}
SRC=/opt/skiff
log() { echo "install-on-node: $*"; }
fail() {
    echo "install-on-node: error: $*" >&2
    exit 1
}
# An unexpected failure names its command (set -e alone would exit silently; -E: in functions too).
trap 'echo "install-on-node: error: \"$BASH_COMMAND\" failed with exit $? (line $LINENO)" >&2' ERR

case "$NODE_START" in systemd | none) ;; *) fail "NODE_START=$NODE_START: systemd or none" ;; esac
[ -d "$HOST/etc" ] || fail "the node's root is not mounted at $HOST (the pod needs the hostPath volume / at /host)"
for f in bin/skiffd bin/skiff-monitor; do
    [ -f "$SRC/$f" ] && [ -x "$SRC/$f" ] || fail "$SRC/$f is missing from the image: build it with manifests/build-installer-image.sh"
done
[ -f "$SRC/skiffd.service" ] || fail "$SRC/skiffd.service is missing from the image: build it with manifests/build-installer-image.sh"
"$SRC/bin/skiffd" config default >/dev/null || fail "$SRC/bin/skiffd does not run in this image (a library missing or too old?)"
if [ "$NODE_START" = systemd ] && [ ! -d "$HOST/run/systemd/system" ]; then
    fail "the node does not run systemd: install with manifests/install.sh instead (or set NODE_START=none to copy the files only)"
fi
if [ -f "$CONFIG/config.toml" ]; then
    "$SRC/bin/skiffd" config check "$CONFIG/config.toml" ||
        fail "the ConfigMap's config.toml ($CONFIG/config.toml) is not valid (see above); nothing was installed"
fi

# Every file is written next to its place and renamed into it: a running monitor keeps its
# (old) binary, new containers get the new one, and nothing is ever half written.
put() { # put SRC DEST MODE
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.skiff-new"
    chmod "$3" "$2.skiff-new"
    mv -f "$2.skiff-new" "$2"
}
put "$SRC/bin/skiffd" "$HOST/usr/local/bin/skiffd" 0755
put "$SRC/bin/skiff-monitor" "$HOST/usr/local/bin/skiff-monitor" 0755
put "$SRC/skiffd.service" "$HOST/etc/systemd/system/skiffd.service" 0644
log "installed /usr/local/bin/skiffd, /usr/local/bin/skiff-monitor and /etc/systemd/system/skiffd.service"
if [ -f "$CONFIG/config.toml" ]; then
    put "$CONFIG/config.toml" "$HOST/etc/skiff/config.toml" 0644
    log "installed the ConfigMap's configuration as /etc/skiff/config.toml"
elif [ ! -e "$HOST/etc/skiff/config.toml" ]; then
    mkdir -p "$HOST/etc/skiff"
    "$SRC/bin/skiffd" config default >"$HOST/etc/skiff/config.toml.skiff-new"
    mv -f "$HOST/etc/skiff/config.toml.skiff-new" "$HOST/etc/skiff/config.toml"
    log "no config.toml in $CONFIG: wrote the defaults as /etc/skiff/config.toml"
else
    log "no config.toml in $CONFIG: the node's /etc/skiff/config.toml stays"
fi
if [ ! -e "$HOST/etc/crictl.yaml" ]; then
    # The socket as the node's skiffd will resolve it (a path on the node).
    socket=$("$SRC/bin/skiffd" --config "$HOST/etc/skiff/config.toml" config get listen)
    cat >"$HOST/etc/crictl.yaml.skiff-new" <<EOF
# written by skiff's install.sh (uninstall.sh --purge removes it while this line is here)
runtime-endpoint: unix://$socket
image-endpoint: unix://$socket
timeout: 30
EOF
    mv -f "$HOST/etc/crictl.yaml.skiff-new" "$HOST/etc/crictl.yaml"
    log "wrote /etc/crictl.yaml (crictl talks to skiffd at $socket)"
fi

on_node() { nsenter --target "$NODE_PID" --mount --uts --ipc --net --pid -- "$@"; }
node=$(on_node uname -n) ||
    fail "cannot enter the namespaces of the node's process $NODE_PID: the pod needs hostPID: true and privileged: true"
log "node $node: entered the namespaces of its process $NODE_PID (mount namespace $(on_node readlink /proc/self/ns/mnt); this pod's $(readlink /proc/self/ns/mnt))"
if [ "$NODE_START" = none ]; then
    log "files installed on node $node; NODE_START=none: skiffd not started"
else
    on_node bash -euo pipefail -c '
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
        systemctl is-active --quiet skiffd.service' ||
        fail "starting skiffd.service on node $node failed (see above; journalctl -u skiffd on the node)"
    log "skiffd installed and started on node $node"
fi
# Wait for the pod's deletion; TERM ends the wait at once (bash is this container's PID 1).
trap - ERR
trap 'log "stopping (skiffd keeps running on the node)"; exit 0' TERM INT
sleep infinity &
wait $!
