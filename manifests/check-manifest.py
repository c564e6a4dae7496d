#!/usr/bin/env python3
"""Checks a rendered installer manifest (build-installer-image.sh's daemonset.yaml) offline.

    python3 manifests/check-manifest.py [--strict] target/installer-image/daemonset.yaml

Needs PyYAML (Debian's python3-yaml) and, for the field checks, the Kubernetes Python client
(`pip install kubernetes` in a venv; without it they are skipped with a note, and `--strict`
fails instead): its generated models are the API's types, field by field. Checks that every document parses, that
every key is a field of its Kubernetes type (the API server rejects unknown fields under
`kubectl apply --validate=strict`, the default) and each value has the field's JSON type, and
what the types cannot say: the DaemonSet's selector matches its pod labels, every volumeMount
names a volume, the configMap volume names the ConfigMap of the same file and namespace, the
hostPath types and mount propagations are valid, the ConfigMap's config.toml is TOML, and the image is no placeholder.
It does not replace a server-side dry run (`kubectl apply --dry-run=server -f FILE`), which
also runs admission.
"""

import re
import sys
import tomllib

import yaml

try:
    import kubernetes.client.models as models
except ImportError:  # the checks that need no types still run
    models = None

KINDS = {("v1", "ConfigMap"): "V1ConfigMap", ("apps/v1", "DaemonSet"): "V1DaemonSet"}
HOSTPATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"}
errors = []


def err(path, msg):
    errors.append(f"{path}: {msg}")


def check(value, typ, path):
    """value (parsed YAML) against an openapi type name of the client ("V1PodSpec", "list[V1Volume]"...)."""
    if value is None:
        return
    m = re.fullmatch(r"[lL]ist\[(.+)\]", typ)
    if m:
        if not isinstance(value, list):
            return err(path, f"a list expected, not {type(value).__name__}")
        for i, v in enumerate(value):
            check(v, m.group(1), f"{path}[{i}]")
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", typ) or re.fullmatch(r"Dict\[str, (.+)\]", typ)
    if m:
        if not isinstance(value, dict):
            return err(path, f"a map expected, not {type(value).__name__}")
        for k, v in value.items():
            check(v, m.group(1), f"{path}.{k}")
        return
    primitive = {"str": str, "bool": bool, "int": int, "float": (int, float), "datetime": str, "object": object}
    if typ in primitive:
        ok = isinstance(value, primitive[typ]) and not (typ == "int" and isinstance(value, bool))
        if not ok:
            err(path, f"{typ} expected, not {type(value).__name__} {value!r}")
        return
    cls = getattr(models, typ, None)
    if cls is None:
        return err(path, f"unknown type {typ}")
    if not isinstance(value, dict):
        return err(path, f"an object ({typ}) expected, not {type(value).__name__}")
    by_json = {j: attr for attr, j in cls.attribute_map.items()}
    for k, v in value.items():
        if k not in by_json:
            err(f"{path}.{k}", f"not a field of {typ} (fields: {', '.join(sorted(by_json))})")
            continue
        check(v, cls.openapi_types[by_json[k]], f"{path}.{k}")


def main():
    args = sys.argv[1:]
    strict = "--strict" in args
    args = [a for a in args if a != "--strict"]
    if len(args) != 1:
        sys.exit(__doc__)
    sys.argv[1:] = args
    if models is None and strict:
        sys.exit("check-manifest.py: --strict needs the Kubernetes Python client (pip install kubernetes)")
    with open(sys.argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    configmaps = {}
    daemonsets = []
    for i, d in enumerate(docs):
        key = (d.get("apiVersion"), d.get("kind"))
        if key not in KINDS:
            err(f"document {i}", f"unexpected {key}")
            continue
        if models is not None:
            check(d, KINDS[key], d["kind"])
        ns = d.get("metadata", {}).get("namespace", "default")
        if d["kind"] == "ConfigMap":
            configmaps[(ns, d["metadata"]["name"])] = d
            for name, text in (d.get("data") or {}).items():
                if name.endswith(".toml"):
                    try:
                        tomllib.loads(text)
                    except tomllib.TOMLDecodeError as e:
                        err(f"ConfigMap.data.{name}", f"not TOML: {e}")
        else:
            daemonsets.append((ns, d))
    for ns, ds in daemonsets:
        spec = ds["spec"]
        tmpl = spec["template"]
        labels = tmpl.get("metadata", {}).get("labels", {})
        for k, v in spec["selector"].get("matchLabels", {}).items():
            if labels.get(k) != v:
                err("DaemonSet.spec.selector", f"{k}={v} does not match the pod template's labels {labels}")
        pod = tmpl["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "hostPath" in v and v["hostPath"].get("type", "") not in HOSTPATH_TYPES:
                err(f"volume {v['name']}", f"hostPath type {v['hostPath']['type']!r}")
            if "configMap" in v and (ns, v["configMap"]["name"]) not in configmaps:
                err(f"volume {v['name']}", f"no ConfigMap {v['configMap']['name']} in namespace {ns} in this file")
        for c in pod["containers"]:
            if "REGISTRY/" in c.get("image", "") or c.get("image", "").endswith(":VERSION"):
                err(f"container {c['name']}", f"image {c['image']} is the placeholder (render with build-installer-image.sh)")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    err(f"container {c['name']}", f"volumeMount {m['name']} names no volume")
                if m.get("mountPropagation", "None") not in ("None", "HostToContainer", "Bidirectional"):
                    err(f"container {c['name']}", f"volumeMount {m['name']}: mountPropagation {m['mountPropagation']!r}")
    for e in errors:
        print(f"check-manifest.py: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    fields = "fields and types checked" if models else "fields and types NOT checked (pip install kubernetes)"
    print(f"check-manifest.py: {sys.argv[1]}: {len(docs)} documents ({', '.join(d['kind'] for d in docs)}) ok; {fields}")


if __name__ == "__main__":
    main()
