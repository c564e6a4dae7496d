#!/usr/bin/env bash
# Builds the installer image the DaemonSet (daemonset.yaml) runs, and renders the manifest for it.
#   manifests/build-installer-image.sh REGISTRY [--from DIR] [--push] [--context-only]
#                                      [--engine docker|podman|buildah|oci] [--base REF] [--insecure] [--out DIR] [--config FILE]
#     REGISTRY        where the image goes, e.g. registry.example.com/infra (the image is
#                     REGISTRY/skiff-installer:VERSION, VERSION from Cargo.toml)
#     --from DIR      use prebuilt skiffd and skiff-monitor from DIR (default: cargo build --release,
#                     about 10 minutes the first time on 2 cores); they run on the nodes, so build
#                     them for the nodes' architecture and a glibc no newer than the nodes'
#     --context-only  only write the build context (target/installer-image/) and the manifest
#     --push          push the image after building it
#     --engine E      docker, podman or buildah build the Dockerfile of the context (FROM the
#                     base, debian:bookworm-slim by default); oci needs no engine and no
#                     network: it assembles the image itself (manifests/oci-image.py, python3)
#                     as an OCI layout in target/installer-image/oci and pushes it with skopeo.
#                     Default: the first of docker, podman, buildah that works (`E info`), else oci.
#     --base REF      the image to build on (engines: the Dockerfile's FROM; oci: pulled with
#                     skopeo, it must have bash and nsenter, and a glibc as new as the binaries').
#                     Without it the oci engine builds from scratch: bash, a static busybox
#                     (Debian's busybox-static: nsenter, cp, mv, sleep...) and the libraries that
#                     bash, skiffd and skiff-monitor link, all copied from this machine (so the
#                     binaries must be built for this machine's architecture).
#     --config FILE   skiffd's configuration for the nodes: checked (skiffd config check) and
#                     put into the rendered manifest's skiff-config ConfigMap (default: the one
#                     in daemonset.yaml, pod_cidr "" and metrics on 127.0.0.1:9102)
#     --out DIR       where the context, the OCI layout and the manifest go (default
#                     target/installer-image; emptied first)
#     --insecure      the registries (REGISTRY, --base) speak plain HTTP or have no valid TLS
#                     certificate (oci engine: skopeo --tls-verify=false)
# Writes $OUT/daemonset.yaml (target/installer-image/daemonset.yaml): daemonset.yaml with the image name filled in
# (kubectl apply -f that file).
set -euo pipefail
cd "$(dirname "$0")/.."
registry=${1:?usage: $0 REGISTRY [--from DIR] [--push] [--context-only] [--engine E] [--base REF] [--insecure]}
shift
from="" push=0 only=0 engine="" base="" insecure=0 ctx=target/installer-image config=""
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from=${2:?--from needs a directory}; shift ;;
        --push) push=1 ;;
        --context-only) only=1 ;;
        --engine) engine=${2:?--engine needs docker, podman, buildah or oci}; shift ;;
        --base) base=${2:?--base needs an image reference}; shift ;;
        --insecure) insecure=1 ;;
        --config) config=${2:?--config needs a file}; shift ;;
        --out) ctx=${2:?--out needs a directory}; shift ;;
        *) echo "build-installer-image.sh: unknown option $1" >&2; exit 1 ;;
    esac
    shift
done
say() { echo "build-installer-image.sh: $*"; }
die() { echo "build-installer-image.sh: $*" >&2; exit 1; }
case "$engine" in
    "" | docker | podman | buildah | oci) ;;
    *) die "--engine $engine: docker, podman, buildah or oci" ;;
esac
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
image="${registry%/}/skiff-installer:$version"
if [ -z "$from" ]; then
    say "cargo build --release (about 10 minutes the first time)"
    cargo build --release --locked --bins
    from=target/release
fi
for b in skiffd skiff-monitor; do [ -f "$from/$b" ] || die "$from/$b not found (--from DIR holds skiffd and skiff-monitor)"; done
if [ -n "$config" ]; then
    "$from/skiffd" config check "$config" >/dev/null || die "--config $config is not a valid skiffd configuration (see above)"
fi
# Emptied first, but only a directory this script made (or an empty one).
if [ -e "$ctx" ] && [ ! -e "$ctx/.skiff-installer-image" ] && [ -n "$(ls -A "$ctx" 2>/dev/null)" ]; then
    die "$ctx exists and is not an earlier output of this script: name an empty or new --out"
fi
rm -rf "$ctx"
mkdir -p "$ctx/bin"
touch "$ctx/.skiff-installer-image"
install -m 0755 "$from/skiffd" "$from/skiff-monitor" "$ctx/bin/"
install -m 0755 manifests/install-on-node.sh "$ctx/"
install -m 0644 manifests/skiffd.service "$ctx/"
# Debian's slim image gets util-linux (nsenter) made sure of; a --base must bring bash and nsenter.
run='RUN apt-get update -q && apt-get install -y -q --no-install-recommends util-linux && rm -rf /var/lib/apt/lists/*'
[ -n "$base" ] && run="# (--base $base: it brings bash and nsenter)"
cat >"$ctx/Dockerfile" <<DOCKERFILE
# skiff's installer image: the binaries and the script that installs them on the node.
FROM ${base:-docker.io/library/debian:bookworm-slim}
$run
COPY bin/skiffd bin/skiff-monitor /opt/skiff/bin/
COPY skiffd.service install-on-node.sh /opt/skiff/
ENTRYPOINT ["/opt/skiff/install-on-node.sh"]
DOCKERFILE
sed "s|image: REGISTRY/skiff-installer:VERSION|image: $image|" manifests/daemonset.yaml >"$ctx/daemonset.yaml"
grep -q "image: $image" "$ctx/daemonset.yaml" || die "daemonset.yaml has no image placeholder"
if [ -n "$config" ]; then
    # The ConfigMap's config.toml block (indented 4) replaced by the file's lines.
    awk -v file="$config" '
        skip && /^(    |$)/ { next }
        { skip = 0; print }
        /^  config.toml: [|]$/ { while ((getline line < file) > 0) print (line == "" ? "" : "    " line); skip = 1 }
    ' "$ctx/daemonset.yaml" >"$ctx/daemonset.yaml.new"
    mv "$ctx/daemonset.yaml.new" "$ctx/daemonset.yaml"
    grep -q "^  config.toml: |$" "$ctx/daemonset.yaml" || die "daemonset.yaml has no config.toml in its ConfigMap"
fi
say "build context in $ctx, manifest $ctx/daemonset.yaml (image $image)"
[ "$only" = 1 ] && exit 0

if [ -z "$engine" ]; then
    # The first that is installed and works (a docker CLI without a daemon does not count).
    for e in docker podman buildah; do
        command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1 && { engine=$e; break; }
    done
    [ -n "$engine" ] || { engine=oci; say "no working docker, podman or buildah: assembling the image without an engine"; }
fi
if [ "$engine" != oci ]; then
    command -v "$engine" >/dev/null 2>&1 || die "$engine is not installed"
    # --insecure: podman and buildah take --tls-verify=false; docker needs the registry in its
    # daemon's insecure-registries.
    etls=()
    [ "$insecure" = 1 ] && [ "$engine" != docker ] && etls=(--tls-verify=false)
    if [ "$engine" = buildah ]; then
        buildah bud "${etls[@]}" -t "$image" "$ctx"
    else
        "$engine" build "${etls[@]}" -t "$image" "$ctx"
    fi
    if [ "$push" = 1 ]; then "$engine" push "${etls[@]}" "$image" || die "pushing $image failed"; fi
    say "built $image; kubectl apply -f $ctx/daemonset.yaml"
    exit 0
fi

# --engine oci: the image's files in $ctx/rootfs, one layer over the base (or none).
command -v python3 >/dev/null 2>&1 || die "the oci engine needs python3"
tls=()
[ "$insecure" = 1 ] && tls=(--tls-verify=false)
rootfs=$ctx/rootfs
mkdir -p "$rootfs/opt/skiff/bin"
cp "$ctx/bin/skiffd" "$ctx/bin/skiff-monitor" "$rootfs/opt/skiff/bin/"
cp "$ctx/install-on-node.sh" "$ctx/skiffd.service" "$rootfs/opt/skiff/"
args=(--layout "$ctx/oci" --tag "$version" --rootfs "$rootfs"
    --entrypoint '["/opt/skiff/install-on-node.sh"]'
    --require "bin/bash|usr/bin/bash" --require "bin/nsenter|usr/bin/nsenter|sbin/nsenter|usr/sbin/nsenter")
if [ -n "$base" ]; then
    command -v skopeo >/dev/null 2>&1 || die "--base needs skopeo (apt-get install skopeo)"
    say "pulling the base $base"
    skopeo copy --quiet "${tls[@]/#--/--src-}" "docker://$base" "oci:$ctx/oci:base" || die "cannot pull the base image $base"
    args+=(--base-tag base)
else
    bb=$(command -v busybox) || die "building from scratch needs a static busybox (apt-get install busybox-static), or name a base with --base"
    ldd "$bb" >/dev/null 2>&1 && die "$bb is not static (apt-get install busybox-static), or name a base with --base"
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
    chmod 1777 "$rootfs/tmp"
    cp "$bb" "$rootfs/bin/busybox"
    cp "$(command -v bash)" "$rootfs/bin/bash"
    for applet in $("$bb" --list); do
        [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
    done
    # The shared libraries (and the dynamic loader) of the dynamic binaries, at the paths they
    # name. ldd fails for binaries of another architecture: those need a base of theirs.
    for b in "$rootfs/bin/bash" "$rootfs/opt/skiff/bin/skiffd" "$rootfs/opt/skiff/bin/skiff-monitor"; do
        libs=$(ldd "$b") || die "ldd $b failed (a static binary, or another architecture?): name a base image with --base"
        if grep -q "not found" <<<"$libs"; then die "$b needs libraries this machine lacks: $libs"; fi
        for lib in $(echo "$libs" | grep -o '/[^ ]*'); do
            [ -e "$rootfs$lib" ] && continue
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    done
    echo "root:x:0:0:root:/:/bin/bash" >"$rootfs/etc/passwd"
    echo "root:x:0:" >"$rootfs/etc/group"
    args+=(--arch-from "$rootfs/opt/skiff/bin/skiffd" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
fi
python3 manifests/oci-image.py "${args[@]}"
say "built $ctx/oci:$version (an OCI layout; skopeo copy oci:$ctx/oci:$version docker://$image pushes it)"
if [ "$push" = 1 ]; then
    command -v skopeo >/dev/null 2>&1 || die "--push needs skopeo (apt-get install skopeo)"
    skopeo copy --quiet "${tls[@]/#--/--dest-}" "oci:$ctx/oci:$version" "docker://$image" || die "pushing $image failed"
    say "pushed $image"
fi
say "kubectl apply -f $ctx/daemonset.yaml"
