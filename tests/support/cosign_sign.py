#!/usr/bin/env python3
"""Signs an image digest the way `cosign sign --key` does (legacy format), for the pull-gate tests.

usage: cosign_sign.py LAYOUT_DIR DIGEST DOCKER_REFERENCE KEY [KEY ...]

Each KEY is a path; a missing key is created (ECDSA P-256 private key in KEY, public key in
KEY.pub). Writes an OCI layout with one ref, "sig": a manifest whose layers are the
simple-signing payload (one per key), each with its base64 ASN.1 signature in the
`dev.cosignproject.cosign/signature` annotation. Push it as the `sha256-<hex>.sig` tag.
"""
import base64
import hashlib
import json
import os
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

layout, digest, reference, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def put(data: bytes) -> str:
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return "sha256:" + h


def load_or_create(path):
    if os.path.exists(path):
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(path + ".pub", "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


payload = json.dumps({
    "critical": {
        "identity": {"docker-reference": reference},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature",
    },
    "optional": None,
}, separators=(",", ":")).encode()
pdig = put(payload)
layers = []
for k in keys:
    sig = load_or_create(k).sign(payload, ec.ECDSA(hashes.SHA256()))
    layers.append({
        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "digest": pdig,
        "size": len(payload),
        "annotations": {"dev.cosignproject.cosign/signature": base64.b64encode(sig).decode()},
    })
config = b"{}"
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
    "layers": layers,
}).encode()
mdig = put(manifest)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig,
                                                  "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "sig"}}]}, f)
print(mdig)
