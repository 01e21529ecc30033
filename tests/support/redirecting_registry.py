#!/usr/bin/env python3
"""A minimal registry that serves an OCI layout and answers every blob request with a redirect,
the way registries backed by object storage do, for the pull gate's redirect tests.

usage: redirecting_registry.py LAYOUT_DIR [REDIRECT_BASE]

/v2/... needs Basic user:secret. GET /v2/<name>/manifests/<digest or ref-name> serves the
manifest; GET /v2/<name>/blobs/<digest> redirects to http://localhost:PORT/storage/<digest>,
which serves the blob without auth (or to REDIRECT_BASE/<digest> when given). Prints "port N"; logs "REQ <host> <path> auth=<yes|no>".
"""
import base64
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LAYOUT = sys.argv[1]
REDIRECT_BASE = sys.argv[2] if len(sys.argv) > 2 else None
REFS = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in json.load(open(os.path.join(LAYOUT, "index.json")))["manifests"]}
GOOD = "Basic " + base64.b64encode(b"user:secret").decode()


def blob(digest):
    path = os.path.join(LAYOUT, "blobs", "sha256", digest.split(":", 1)[1])
    with open(path, "rb") as f:
        return f.read()


class H(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        auth = self.headers.get("Authorization")
        sys.stderr.write("REQ %s %s auth=%s\n" % (self.headers.get("Host"), self.path, "yes" if auth else "no"))
        sys.stderr.flush()
        parts = self.path.split("/")
        port = self.server.server_address[1]
        if parts[1] == "storage":
            return self.send(200, blob(parts[2]), [("Content-Type", "application/octet-stream")])
        if auth != GOOD:
            return self.send(401, b"{}", [("WWW-Authenticate", 'Basic realm="test"')])
        if "manifests" in parts:
            ref = parts[-1]
            digest = REFS[ref]["digest"] if ref in REFS else ref
            data = blob(digest)
            mt = json.loads(data).get("mediaType", "application/vnd.oci.image.manifest.v1+json")
            return self.send(200, data, [("Content-Type", mt), ("Docker-Content-Digest", digest)])
        if "blobs" in parts:
            base = REDIRECT_BASE or f"http://localhost:{port}/storage"
            return self.send(307, b"", [("Location", f"{base}/{parts[-1]}")])
        return self.send(200, b"{}")


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
