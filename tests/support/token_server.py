#!/usr/bin/env python3
"""A Docker token-auth endpoint (the registry token spec) for the pull-gate tests.

usage: token_server.py CERT_PEM_OUT

Makes an ECDSA P-256 key and a self-signed certificate (written to CERT_PEM_OUT for the
registry's rootcertbundle), then serves GET /token?service=&scope= on 127.0.0.1: with Basic
user:secret it grants the requested actions, without it (or with other credentials) it grants
none. Prints "port N"; logs "TOKEN auth=<yes|no> granted=<yes|no> scope=<scope>" per request.
"""
import base64
import datetime
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate test token issuer")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(key, hashes.SHA256())
)
with open(sys.argv[1], "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
X5C = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
GOOD = "Basic " + base64.b64encode(b"user:secret").decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(service, access):
    header = {"typ": "JWT", "alg": "ES256", "x5c": [X5C]}
    t = int(time.time())
    claims = {"iss": "test-issuer", "sub": "user", "aud": service, "exp": t + 300, "nbf": t - 10, "iat": t,
              "jti": str(uuid.uuid4()), "access": access}
    signing_input = (b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())).encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing_input.decode() + "." + b64url(sig)


class H(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        u = urlparse(self.path)
        q = parse_qs(u.query)
        granted = self.headers.get("Authorization") == GOOD
        access = []
        for scope in q.get("scope", []):
            parts = scope.split(":")
            if len(parts) == 3 and granted:
                access.append({"type": parts[0], "name": parts[1], "actions": parts[2].split(",")})
        sys.stderr.write("TOKEN auth=%s granted=%s scope=%s\n" % ("yes" if self.headers.get("Authorization") else "no",
                                                                  "yes" if granted else "no", ",".join(q.get("scope", []))))
        sys.stderr.flush()
        body = json.dumps({"token": token(q.get("service", [""])[0], access), "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
