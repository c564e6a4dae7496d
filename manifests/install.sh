#!/usr/bin/env bash
# Installs skiff on this node and starts skiffd.
#   sudo manifests/install.sh              build from this checkout (cargo, ~10 min the first time
#                                          on 2 cores, about 1 min when target/ is warm), install, start
#   sudo manifests/install.sh --from DIR   install prebuilt skiffd and skiff-monitor from DIR (no build)
#   options: --no-start (install only), --no-deps (do not apt-get install the packages skiff needs)
# With systemd, skiffd runs as the skiffd.service unit (Type=notify: started = serving); without
# it, in the background with its log in $LOG_FILE (reopened on SIGHUP) and its pid in $PID_FILE.
# Writes $ETC_DIR/config.toml (the commented defaults) and $CRICTL_YAML (crictl's endpoints)
# only when they do not exist yet.
#
# Every path can be moved (tests install into a temporary directory this way):
#   PREFIX=/usr/local  ETC_DIR=/etc/skiff  UNIT_DIR=/etc/systemd/system  ROOT=/var/lib/skiff
#   STATE=/run/skiff  LOG_FILE=/var/log/skiffd.log  PID_FILE=/run/skiffd.pid  CRICTL_YAML=/etc/crictl.yaml
#   SKIFF_INIT=auto|systemd|background
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
ETC_DIR=${ETC_DIR:-/etc/skiff}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
ROOT=${ROOT:-}
STATE=${STATE:-}
LOG_FILE=${LOG_FILE:-/var/log/skiffd.log}
PID_FILE=${PID_FILE:-/run/skiffd.pid}
CRICTL_YAML=${CRICTL_YAML:-/etc/crictl.yaml}
SKIFF_INIT=${SKIFF_INIT:-auto}
RUST_MIN=1.85

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

start=1 deps=1 from=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-start) start=0 ;;
        --no-deps) deps=0 ;;
        --from) from=${2:?--from needs a directory}; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || die "run as root (sudo manifests/install.sh)"

if [ "$deps" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(nftables iproute2 libseccomp2)
    [ -z "$from" ] && pkgs+=(libseccomp-dev pkg-config)
    need=()
    for pkg in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "installing packages: ${need[*]}"
        apt-get update -q >/dev/null
        apt-get install -y -q "${need[@]}" >/dev/null
    fi
fi

# Finds cargo: on PATH, root's rustup, or the rustup of the user who ran sudo.
find_cargo() {
    local home
    if command -v cargo >/dev/null 2>&1; then command -v cargo; return; fi
    [ -x "$HOME/.cargo/bin/cargo" ] && { echo "$HOME/.cargo/bin/cargo"; return; }
    if [ -n "${SUDO_USER:-}" ]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        [ -x "$home/.cargo/bin/cargo" ] && { echo "$home/.cargo/bin/cargo"; return; }
    fi
    return 1
}

if [ -z "$from" ]; then
    cargo=$(find_cargo) || die "cargo not found (not on PATH, not in ~/.cargo/bin, not in ${SUDO_USER:-root}'s).
  skiff needs Rust $RUST_MIN or newer (Debian 12's rustc is 1.63: too old). Install rustup as your user:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  then run this script again with sudo, or use --from DIR with binaries built elsewhere."
    rustc="$(dirname "$cargo")/rustc"
    [ -x "$rustc" ] || rustc=rustc
    have=$("$rustc" --version 2>/dev/null | awk '{print $2}')
    if [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$RUST_MIN" "$have" | sort -V | head -1)" != "$RUST_MIN" ]; then
        die "rustc $have is older than $RUST_MIN: rustup update stable (or install rustup, see README)"
    fi
    say "building skiffd and skiff-monitor with $cargo (rustc $have): cargo build --release."
    say "this takes about 10 minutes the first time on 2 cores (about 1 minute when target/ is warm)"
    owner=$(stat -c %U .)
    if [ -n "${SUDO_USER:-}" ] && [ "$owner" = "$SUDO_USER" ]; then
        # Build as the owner of the checkout: target/ stays theirs.
        sudo -u "$SUDO_USER" env PATH="$(dirname "$cargo"):$PATH" "$cargo" build --release --locked --bins
    else
        "$cargo" build --release --locked --bins
    fi
    from=target/release
fi
for b in skiffd skiff-monitor; do
    [ -x "$from/$b" ] || die "$from/$b not found"
done

say "installing $PREFIX/bin/skiffd and $PREFIX/bin/skiff-monitor"
install -D -m 0755 "$from/skiffd" "$PREFIX/bin/skiffd"
install -D -m 0755 "$from/skiff-monitor" "$PREFIX/bin/skiff-monitor"
install -d -m 0755 "$ETC_DIR"
"$PREFIX/bin/skiffd" config default >"$ETC_DIR/config.toml.default"
if [ ! -e "$ETC_DIR/config.toml" ]; then
    cp "$ETC_DIR/config.toml.default" "$ETC_DIR/config.toml"
    say "wrote $ETC_DIR/config.toml (the defaults; network.pod_cidr \"\" takes the node's range from the kubelet)"
fi
"$PREFIX/bin/skiffd" --config "$ETC_DIR/config.toml" config check "$ETC_DIR/config.toml" >/dev/null
args=(--config "$ETC_DIR/config.toml")
[ -n "$ROOT" ] && args+=(--root "$ROOT")
[ -n "$STATE" ] && args+=(--state "$STATE")
socket=$("$PREFIX/bin/skiffd" "${args[@]}" config get listen)
"$PREFIX/bin/skiffd" "${args[@]}" check || say "skiffd check reports missing features (see above)" >&2

if [ ! -e "$CRICTL_YAML" ]; then
    cat >"$CRICTL_YAML" <<EOF
# written by skiff's install.sh (uninstall.sh --purge removes it while this line is here)
runtime-endpoint: unix://$socket
image-endpoint: unix://$socket
timeout: 30
EOF
    say "wrote $CRICTL_YAML (crictl talks to skiffd)"
fi

[ "$start" = 1 ] || { say "installed (not started)"; exit 0; }
if [ "$SKIFF_INIT" = auto ]; then
    if [ -d /run/systemd/system ]; then SKIFF_INIT=systemd; else SKIFF_INIT=background; fi
fi
if [ "$SKIFF_INIT" = systemd ]; then
    install -d "$UNIT_DIR"
    sed -e "s|^ExecStart=.*|ExecStart=$PREFIX/bin/skiffd ${args[*]}|" manifests/skiffd.service >"$UNIT_DIR/skiffd.service"
    systemctl daemon-reload
    systemctl enable skiffd.service
    systemctl restart skiffd.service # returns once skiffd sent READY=1 (Type=notify)
    say "skiffd started (systemctl status skiffd; journalctl -u skiffd), socket $socket"
else
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        say "stopping the running skiffd ($(cat "$PID_FILE"))"
        kill "$(cat "$PID_FILE")"
        for _ in $(seq 200); do kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break; sleep 0.1; done
    fi
    install -d "$(dirname "$LOG_FILE")" "$(dirname "$PID_FILE")"
    nohup "$PREFIX/bin/skiffd" "${args[@]}" --log-file "$LOG_FILE" </dev/null >/dev/null 2>>"$LOG_FILE" &
    echo $! >"$PID_FILE"
    for _ in $(seq 300); do [ -S "$socket" ] && break; kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break; sleep 0.1; done
    [ -S "$socket" ] || die "skiffd did not start, see $LOG_FILE"
    timeout 60 "$PREFIX/bin/skiffd" "${args[@]}" pods >/dev/null || die "skiffd does not answer, see $LOG_FILE"
    say "skiffd started (pid $(cat "$PID_FILE"), log $LOG_FILE, socket $socket)"
    say "rotate the log with logrotate: postrotate kill -HUP \$(cat $PID_FILE)"
fi
