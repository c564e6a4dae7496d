#!/usr/bin/env bash
# Builds the installer image the DaemonSet (daemonset.yaml) runs, and renders the manifest for it.
#   manifests/build-installer-image.sh REGISTRY [--from DIR] [--push] [--context-only]
#     REGISTRY        where the image goes, e.g. registry.example.com/infra (the image is
#                     REGISTRY/skiff-installer:VERSION, VERSION from Cargo.toml)
#     --from DIR      use prebuilt skiffd and skiff-monitor from DIR (default: cargo build --release,
#                     about 10 minutes the first time on 2 cores); they run on the nodes, so build
#                     them for the nodes' architecture and a glibc no newer than the nodes'
#     --context-only  only write the build context (target/installer-image/) and the manifest
#     --push          push the image after building it
# Uses docker, podman or buildah, whichever is found. Writes target/installer-image/daemonset.yaml:
# daemonset.yaml with the image name filled in (kubectl apply -f that file).
# (No container engine was available where this script was written: the context and manifest it
# writes were checked, the image build and push were not run.)
set -euo pipefail
cd "$(dirname "$0")/.."
registry=${1:?usage: $0 REGISTRY [--from DIR] [--push] [--context-only]}
shift
from="" push=0 only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from=${2:?--from needs a directory}; shift ;;
        --push) push=1 ;;
        --context-only) only=1 ;;
        *) echo "build-installer-image.sh: unknown option $1" >&2; exit 1 ;;
    esac
    shift
done
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
image="${registry%/}/skiff-installer:$version"
ctx=target/installer-image
if [ -z "$from" ]; then
    echo "build-installer-image.sh: cargo build --release (about 10 minutes the first time)"
    cargo build --release --locked --bins
    from=target/release
fi
rm -rf "$ctx"
mkdir -p "$ctx/bin"
install -m 0755 "$from/skiffd" "$from/skiff-monitor" "$ctx/bin/"
install -m 0755 manifests/install-on-node.sh "$ctx/"
install -m 0644 manifests/skiffd.service "$ctx/"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
# skiff's installer image: the binaries and the script that installs them on the node.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -q && apt-get install -y -q --no-install-recommends util-linux && rm -rf /var/lib/apt/lists/*
COPY bin/skiffd bin/skiff-monitor /opt/skiff/bin/
COPY skiffd.service install-on-node.sh /opt/skiff/
ENTRYPOINT ["/opt/skiff/install-on-node.sh"]
DOCKERFILE
sed "s|image: REGISTRY/skiff-installer:VERSION|image: $image|" manifests/daemonset.yaml >"$ctx/daemonset.yaml"
grep -q "image: $image" "$ctx/daemonset.yaml" || { echo "build-installer-image.sh: daemonset.yaml has no image placeholder" >&2; exit 1; }
echo "build-installer-image.sh: build context in $ctx, manifest $ctx/daemonset.yaml (image $image)"
[ "$only" = 1 ] && exit 0
engine=""
for e in docker podman buildah; do command -v "$e" >/dev/null 2>&1 && { engine=$e; break; }; done
[ -n "$engine" ] || { echo "build-installer-image.sh: no docker, podman or buildah: build $ctx yourself" >&2; exit 1; }
if [ "$engine" = buildah ]; then buildah bud -t "$image" "$ctx"; else "$engine" build -t "$image" "$ctx"; fi
[ "$push" = 1 ] && "$engine" push "$image"
echo "build-installer-image.sh: built $image; kubectl apply -f $ctx/daemonset.yaml"
