#!/usr/bin/env python3
"""A registry that has the OCI referrers API (distribution-spec v1.1, "Listing Referrers"), made
by putting this proxy in front of docker-registry 2.8, which lacks it. The proxy answers
GET /v2/<name>/referrers/<digest> with the index the referrers tag schema keeps under the tag
sha256-<hex>, and hides that tag itself (404), so a client that finds bundles here used the API.
Everything else is passed through.

usage: referrers_proxy.py UPSTREAM_PORT        prints "port N"; logs "REQ <method> <path>"
"""
import re
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = "http://127.0.0.1:%s" % sys.argv[1]
INDEX = "application/vnd.oci.image.index.v1+json"
TAG = re.compile(r"^/v2/(.+)/manifests/sha256-[0-9a-f]{64}$")
REFERRERS = re.compile(r"^/v2/(.+)/referrers/sha256:([0-9a-f]{64})$")


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send(self, code, body, headers):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def forward(self, path, headers):
        req = urllib.request.Request(UPSTREAM + path, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.read(), list(r.headers.items())
        except urllib.error.HTTPError as e:
            return e.code, e.read(), list(e.headers.items())

    def handle_any(self):
        sys.stderr.write("REQ %s %s\n" % (self.command, self.path))
        sys.stderr.flush()
        path = self.path.split("?", 1)[0]
        if TAG.match(path):
            return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"hidden"}]}', [("Content-Type", "application/json")])
        m = REFERRERS.match(path)
        if m:
            code, body, _ = self.forward("/v2/%s/manifests/sha256-%s" % (m.group(1), m.group(2)), {"Accept": INDEX})
            if code != 200:
                body = b'{"schemaVersion":2,"mediaType":"%s","manifests":[]}' % INDEX.encode()
            return self.send(200, body, [("Content-Type", INDEX)])
        keep = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization", "range")}
        code, body, headers = self.forward(self.path, keep)
        if self.command == "HEAD":
            self.send_response(code)
            for k, v in headers:
                if k.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(k, v)
            return self.end_headers()
        passed = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding", "connection")]
        self.send(code, body, passed)

    do_GET = handle_any
    do_HEAD = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("port %d" % server.server_address[1], flush=True)
server.serve_forever()
