#!/usr/bin/env python3
"""Builds the OCI benchmark image: one linux/amd64 image of uncompressed tar layers of
incompressible, deterministic bytes, in an OCI image layout (format as tests/support/oci_images.py).

usage: gen_oci_image.py LAYOUT_DIR [LAYER_MIB,...]     (default 80,50,35,20,15 = 200 MiB)

The layout gets the ref v1. Prints "<manifest digest> <largest layer digest> <its size>
<total bytes of all blobs>". Same arguments, same bytes, same digests (seeded generator, fixed
tar headers). Uncompressed `application/vnd.oci.image.layer.v1.tar` layers: no gzip CPU for the
builder, and nothing a registry could recompress.
"""
import hashlib
import io
import json
import os
import random
import sys
import tarfile

OUT = sys.argv[1]
SIZES_MIB = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "80,50,35,20,15").split(",")]
BLOBS = os.path.join(OUT, "blobs", "sha256")
os.makedirs(BLOBS, exist_ok=True)


def put(data: bytes) -> str:
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(BLOBS, h), "wb") as f:
        f.write(data)
    return "sha256:" + h


def layer(i: int, mib: int):
    data = random.Random(f"tollgate-oci-bench-{i}").randbytes(mib << 20)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(f"bench/layer{i}.bin")
        info.size = len(data)
        info.mtime = 1577836800
        info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    return put(tar), len(tar)


layers = [layer(i, m) for i, m in enumerate(SIZES_MIB)]
config = json.dumps({
    "architecture": "amd64",
    "os": "linux",
    "config": {"Cmd": ["/bin/true"]},
    "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
}, sort_keys=True).encode()
cdig = put(config)
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s} for d, s in layers],
}, sort_keys=True).encode()
mdig = put(manifest)
with open(os.path.join(OUT, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(OUT, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
big = max(layers, key=lambda l: l[1])
print(mdig, big[0], big[1], sum(s for _, s in layers) + len(config) + len(manifest))
