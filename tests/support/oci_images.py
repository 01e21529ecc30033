#!/usr/bin/env python3
"""Builds small, real, deterministic OCI images in an OCI image layout, for the pull-gate tests.

usage: oci_images.py LAYOUT_DIR

Refs in the layout: v1 and v2 (two linux/amd64 images that differ in one layer) and multi (an
image index of a linux/amd64 and a linux/arm64 image). Prints JSON {ref: manifest digest}.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

OUT = sys.argv[1]
BLOBS = os.path.join(OUT, "blobs", "sha256")
os.makedirs(BLOBS, exist_ok=True)


def put(data: bytes) -> str:
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(BLOBS, h), "wb") as f:
        f.write(data)
    return "sha256:" + h


def layer(files):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1577836800
            t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    gz = gzip.compress(tar, mtime=0)
    return put(gz), len(gz), "sha256:" + hashlib.sha256(tar).hexdigest()


def image(arch, marker, extra=b""):
    layers = [layer({"etc/base.txt": b"base layer\n"}), layer({"app/marker.txt": marker.encode() + extra})]
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/app/marker.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]},
    }, sort_keys=True).encode()
    cdig = put(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s} for d, s, _ in layers],
    }, sort_keys=True).encode()
    return put(manifest), len(manifest)


refs = {}
entries = []
for ref, arch, marker in [("v1", "amd64", "version one"), ("v2", "amd64", "version two")]:
    d, s = image(arch, marker)
    refs[ref] = d
    entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": s,
                    "annotations": {"org.opencontainers.image.ref.name": ref}})
children = []
for arch in ["amd64", "arm64"]:
    d, s = image(arch, "multi " + arch)
    refs["multi-" + arch] = d
    children.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": s,
                     "platform": {"architecture": arch, "os": "linux"}})
index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children}, sort_keys=True).encode()
idig = put(index)
refs["multi"] = idig
entries.append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idig, "size": len(index),
                "annotations": {"org.opencontainers.image.ref.name": "multi"}})
with open(os.path.join(OUT, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(OUT, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": entries}, f)
json.dump(refs, sys.stdout, indent=1, sort_keys=True)
