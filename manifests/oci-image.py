#!/usr/bin/env python3
"""Assembles an OCI image without a container engine (build-installer-image.sh --engine oci).

    oci-image.py --layout DIR --tag TAG --rootfs DIR [--base-tag TAG] [--entrypoint JSON]
                 [--env K=V]... [--require PATH]...

Packs the --rootfs directory into one layer (a reproducible tar.gz: sorted, owner 0:0, mtime
SOURCE_DATE_EPOCH or 0) and writes the layer, an image config and a manifest into the OCI
layout DIR, tagged TAG (index.json's org.opencontainers.image.ref.name, as skopeo's oci:DIR:TAG
reads it). With --base-tag the layout already holds a base image (skopeo copy docker://REF
oci:DIR:BASE) and the layer goes on top of it: its config (Env, User, WorkingDir...) is kept, the
entrypoint replaced. --require PATH fails unless some layer (or the rootfs) has PATH (e.g.
usr/bin/nsenter). Only the Python standard library is used.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64", 0x28: "arm", 0x08: "mips64le", 0x15: "ppc64le", 0x16: "s390x", 0xF3: "riscv64"}


def die(msg):
    print(f"oci-image.py: {msg}", file=sys.stderr)
    sys.exit(1)


def blob_path(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def put_blob(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    return digest, len(data)


def read_json_blob(layout, digest):
    with open(blob_path(layout, digest), "rb") as f:
        return json.load(f)


def elf_arch(path):
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        die(f"{path} is not an ELF binary")
    little = head[5] == 1
    machine = int.from_bytes(head[18:20], "little" if little else "big")
    arch = ELF_MACHINES.get(machine)
    if arch is None:
        die(f"{path}: unknown ELF machine {machine:#x}")
    return arch


def layer_tar(rootfs, mtime):
    """The rootfs as an uncompressed tar (bytes), reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in dirnames + sorted(filenames):
                paths.append(os.path.join(dirpath, name))
        for path in sorted(paths, key=lambda p: os.path.relpath(p, rootfs)):
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym():
                tar.addfile(info)
            else:
                die(f"{path}: only files, directories and symlinks go into the image")
    return buf.getvalue()


def layer_paths(layout, manifest):
    names = set()
    for layer in manifest.get("layers", []):
        mode = "r:gz" if layer["mediaType"].endswith("gzip") else "r:*"
        with tarfile.open(blob_path(layout, layer["digest"]), mode) as tar:
            for m in tar.getmembers():
                names.add(os.path.normpath(m.name).lstrip("/"))
    return names


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layout", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--base-tag")
    p.add_argument("--entrypoint", default="null")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--arch-from", help="an ELF binary whose architecture the image gets (no base)")
    p.add_argument("--require", action="append", default=[])
    a = p.parse_args()

    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    os.makedirs(os.path.join(a.layout, "blobs", "sha256"), exist_ok=True)
    index_path = os.path.join(a.layout, "index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    else:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    with open(os.path.join(a.layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    if a.base_tag:
        refs = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == a.base_tag]
        if len(refs) != 1:
            die(f"the layout {a.layout} has no single image tagged {a.base_tag}")
        if refs[0]["mediaType"] != OCI_MANIFEST:
            die(f"base {a.base_tag} is a {refs[0]['mediaType']}, not one image manifest (copy one platform)")
        base_manifest = read_json_blob(a.layout, refs[0]["digest"])
        config = read_json_blob(a.layout, base_manifest["config"]["digest"])
        layers = list(base_manifest["layers"])
        have = layer_paths(a.layout, base_manifest)
    else:
        arch = elf_arch(a.arch_from) if a.arch_from else die("--arch-from is needed without --base-tag")
        config = {"architecture": arch, "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        layers = []
        have = set()

    tar = layer_tar(a.rootfs, mtime)
    for dirpath, dirnames, filenames in os.walk(a.rootfs):
        for name in dirnames + filenames:
            have.add(os.path.relpath(os.path.join(dirpath, name), a.rootfs))
    for req in a.require:
        alternatives = req.split("|")
        if not any(alt.lstrip("/") in have for alt in alternatives):
            die(f"the image would have none of {', '.join(alternatives)} (install-on-node.sh needs it)")

    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    gz = gzip.compress(tar, compresslevel=6, mtime=0)
    layer_digest, layer_size = put_blob(a.layout, gz)
    layers.append({"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size})

    cfg = config.setdefault("config", {}) or {}
    config["config"] = cfg
    env = {e.split("=", 1)[0]: e for e in cfg.get("Env") or []}
    for e in a.env:
        env[e.split("=", 1)[0]] = e
    cfg["Env"] = list(env.values())
    cfg["Entrypoint"] = json.loads(a.entrypoint)
    cfg["Cmd"] = None
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(diff_id)
    config.setdefault("history", []).append({"created_by": "manifests/oci-image.py (skiff installer files)"})
    config.pop("created", None)
    config_digest, config_size = put_blob(a.layout, json.dumps(config, sort_keys=True).encode())

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    }
    manifest_digest, manifest_size = put_blob(a.layout, json.dumps(manifest, sort_keys=True).encode())
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != a.tag
    ]
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": config.get("architecture", ""), "os": config.get("os", "linux")},
            "annotations": {"org.opencontainers.image.ref.name": a.tag},
        }
    )
    tmp = index_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(index, f)
    os.rename(tmp, index_path)
    print(f"oci-image.py: {a.layout}:{a.tag} = {manifest_digest} ({len(layers)} layers, {config.get('architecture')})")


if __name__ == "__main__":
    main()
