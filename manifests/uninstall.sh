#!/usr/bin/env bash
# Stops skiffd and removes its binaries and unit.
#   sudo manifests/uninstall.sh           refuses while pods exist (lists them)
#   sudo manifests/uninstall.sh --force   first stops and removes every pod and container through
#                                         skiffd (`skiffd pods --remove`), then uninstalls
#   sudo manifests/uninstall.sh --purge   also removes everything skiff made: $ETC_DIR, the root
#                                         and state directories (unmounting what is left there),
#                                         the log, the bridge, the nftables table, the pods' cgroup
#                                         parent, and $CRICTL_YAML if install.sh wrote it
# net.ipv4.ip_forward (set to 1 for pod traffic) is left as it is: other software on a node relies
# on it. The bridge's own sysctls go with the bridge.
# The same path variables as install.sh: PREFIX ETC_DIR UNIT_DIR ROOT STATE LOG_FILE PID_FILE
# CRICTL_YAML SKIFF_INIT.
set -euo pipefail
PREFIX=${PREFIX:-/usr/local}
ETC_DIR=${ETC_DIR:-/etc/skiff}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
ROOT=${ROOT:-}
STATE=${STATE:-}
LOG_FILE=${LOG_FILE:-/var/log/skiffd.log}
PID_FILE=${PID_FILE:-/run/skiffd.pid}
CRICTL_YAML=${CRICTL_YAML:-/etc/crictl.yaml}
SKIFF_INIT=${SKIFF_INIT:-auto}

say() { echo "uninstall.sh: $*"; }
die() { echo "uninstall.sh: $*" >&2; exit 1; }

force=0 purge=0
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        --purge) purge=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown option $a (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run as root"

skiffd="$PREFIX/bin/skiffd"
args=()
[ -f "$ETC_DIR/config.toml" ] && args+=(--config "$ETC_DIR/config.toml")
[ -n "$ROOT" ] && args+=(--root "$ROOT")
[ -n "$STATE" ] && args+=(--state "$STATE")
get() { "$skiffd" "${args[@]}" config get "$1"; }

if [ -x "$skiffd" ]; then
    socket=$(get listen) root=$(get root) state=$(get state)
    bridge=$(get network.bridge) table=$(get network.nft_table) plugin=$(get network.plugin)
    cgparent=$(get runtime.default_cgroup_parent)
else
    say "$skiffd not found: removing what is left with the default names"
    socket=${STATE:-/run/skiff}/skiff.sock root=${ROOT:-/var/lib/skiff} state=${STATE:-/run/skiff}
    bridge=skiff0 table=skiff plugin=bridge cgparent=/skiff
fi

# Pods: refuse, or remove them through skiffd while it still runs.
if [ -x "$skiffd" ] && [ -S "$socket" ] && pods=$(timeout 30 "$skiffd" "${args[@]}" pods 2>/dev/null); then
    if [ -n "$pods" ]; then
        if [ "$force" = 0 ]; then
            echo "$pods" | sed 's/^/  /' >&2
            die "$(echo "$pods" | wc -l) pod(s) exist (above): drain the node first, or use --force to stop and remove them"
        fi
        say "stopping and removing $(echo "$pods" | wc -l) pod(s)"
        timeout 300 "$skiffd" "${args[@]}" pods --remove >/dev/null || die "some pods could not be removed (see above); skiffd keeps running"
    fi
elif [ -d "$state/containers" ] && [ -n "$(ls -A "$state/containers" 2>/dev/null)" ]; then
    [ "$force" = 1 ] || die "skiffd is not running but $state/containers is not empty: start skiffd and run this again (or --force)"
    say "skiffd is not running: containers in $state/containers cannot be stopped through it"
fi

# Stop skiffd.
if [ "$SKIFF_INIT" != background ] && [ -d /run/systemd/system ] && [ -f "$UNIT_DIR/skiffd.service" ]; then
    systemctl disable --now skiffd.service
    rm -f "$UNIT_DIR/skiffd.service"
    systemctl daemon-reload
elif [ -f "$PID_FILE" ]; then
    pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then die "skiffd ($pid) did not stop"; fi
    fi
    rm -f "$PID_FILE"
fi
rm -f "$PREFIX/bin/skiffd" "$PREFIX/bin/skiff-monitor"

if [ "$purge" = 1 ]; then
    # Mounts left under the state or root dir (a pod that could not be removed), deepest first.
    for dir in "$state" "$root"; do
        awk -v d="$dir/" 'index($5"/", d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r mp; do
            umount -l "$mp" || say "cannot unmount $mp"
        done
    done
    rm -rf "$state" "$root" "$ETC_DIR" "$LOG_FILE"
    if [ "$plugin" = bridge ]; then
        if ip link show "$bridge" >/dev/null 2>&1; then ip link del "$bridge"; fi
        if command -v nft >/dev/null 2>&1 && nft list table inet "$table" >/dev/null 2>&1; then
            nft delete table inet "$table"
        fi
    fi
    # The pods' cgroup parent in every hierarchy (v1 controllers or the v2 root), deepest first.
    awk '$0 ~ / - cgroup2? / {print $5}' /proc/self/mountinfo | while read -r h; do
        top="$h/${cgparent#/}"
        if [ -d "$top" ]; then find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
        if [ -d "$top" ]; then say "cannot remove the cgroup $top (processes left in it?)"; fi
    done
    if [ -f "$CRICTL_YAML" ] && grep -q "written by skiff's install.sh" "$CRICTL_YAML"; then rm -f "$CRICTL_YAML"; fi
    say "purged ($state, $root, $ETC_DIR, $LOG_FILE, bridge $bridge, nft table $table, cgroup $cgparent)"
fi
say "done"
