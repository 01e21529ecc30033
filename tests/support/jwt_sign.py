#!/usr/bin/env python3
"""A test OIDC issuer: signing keys, their JWKS, and signed JWTs (python-cryptography).

usage:
  jwt_sign.py init DIR                 writes DIR/jwks.json (RSA 2048 kid "rsa1", P-256 kid "ec1")
                                       and the private keys, plus DIR/other.key (a key not in the JWKS)
  jwt_sign.py sign DIR KID ALG CLAIMS  prints a JWT; KID rsa1/ec1/other (KEY:KID signs with KEY's
                                       key under the header kid KID); ALG RS256/ES256/none;
                                       CLAIMS a JSON object ("exp": "+N" means now+N seconds)
"""
import base64
import json
import os
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def save(key, path):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def load(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def init(d):
    os.makedirs(d, exist_ok=True)
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e = ec.generate_private_key(ec.SECP256R1())
    save(r, os.path.join(d, "rsa1.key"))
    save(e, os.path.join(d, "ec1.key"))
    save(ec.generate_private_key(ec.SECP256R1()), os.path.join(d, "other.key"))
    rn = r.public_key().public_numbers()
    en = e.public_key().public_numbers()
    jwks = {"keys": [
        {"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256",
         "n": b64u(rn.n.to_bytes((rn.n.bit_length() + 7) // 8, "big")), "e": b64u(rn.e.to_bytes(3, "big"))},
        {"kty": "EC", "kid": "ec1", "use": "sig", "crv": "P-256",
         "x": b64u(en.x.to_bytes(32, "big")), "y": b64u(en.y.to_bytes(32, "big"))},
    ]}
    with open(os.path.join(d, "jwks.json"), "w") as f:
        json.dump(jwks, f)


def sign(d, kid, alg, claims):
    claims = json.loads(claims)
    for k in ("exp", "nbf", "iat"):
        if isinstance(claims.get(k), str) and claims[k][:1] in "+-":
            claims[k] = int(time.time()) + int(claims[k])
    key_name, _, header_kid = kid.partition(":")
    header = {"alg": alg, "typ": "JWT", "kid": header_kid or key_name}
    signing = (b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())).encode()
    if alg == "none":
        return signing.decode() + "."
    key = load(os.path.join(d, key_name + ".key"))
    if alg == "RS256":
        sig = key.sign(signing, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signing, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing.decode() + "." + b64u(sig)


if __name__ == "__main__":
    if sys.argv[1] == "init":
        init(sys.argv[2])
    else:
        print(sign(*sys.argv[2:6]))
