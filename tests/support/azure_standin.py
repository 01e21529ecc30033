"""A loopback stand-in for the Azure endpoints a gate with `auth = "managed-identity"` talks to,
written to their documented wire formats, because the real ones cannot run here:

- the Instance Metadata Service token endpoint (GET /metadata/identity/oauth2/token,
  api-version 2018-02-01, `Metadata: true`; expires_in/expires_on as strings);
- the App Service / Container Apps managed-identity endpoint (GET /msi/token, api-version
  2019-08-01, `X-IDENTITY-HEADER`; expires_on as Unix seconds);
- Entra ID's token endpoint for workload identity (POST /{tenant}/oauth2/v2.0/token, the
  client-credentials grant with a JWT client assertion, RFC 7523);
- an Azure Artifacts feed (GET /feed/simple/..., /feed/packages/...: the static tree in ROOT),
  which takes only a bearer token issued for Azure DevOps' resource;
- Azure Container Registry's token exchange (POST /oauth2/exchange: an Entra ID token for ACR
  in, a refresh token out), its token endpoint (GET /oauth2/token, Basic with the refresh token
  as the password of the user 00000000-0000-0000-0000-000000000000), and /v2/ behind a bearer
  challenge, proxied to the real docker-registry at REGISTRY.

Control (the test's): POST /control?lifetime=N|down=0/1|revoke=1|refuse=0/1 (the feed and the
exchange refuse every token: an identity without the right) and GET /control/stats.

    python3 azure_standin.py ROOT REGISTRY_URL IDENTITY_HEADER ASSERTION_FILE CLIENT_ID
"""
import base64
import http.client
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

ROOT, REGISTRY, IDENTITY_HEADER, ASSERTION_FILE, CLIENT_ID = sys.argv[1:6]
DEVOPS = "499b84ac-1321-427f-aa17-267ca6975798"
ACR = "https://containerregistry.azure.net"
ACR_USER = "00000000-0000-0000-0000-000000000000"

lock = threading.Lock()
state = {"lifetime": 3600, "down": False, "n": 0, "refuse": False}
tokens = {}  # token -> (resource, expires_at)
refresh = set()
access = set()
stats = {"issued": {}, "anonymous": 0, "refused": 0, "exchanges": 0, "identity_calls": 0,
         "feed_ok": 0, "v2_ok": 0, "client_ids": []}


def issue(resource):
    with lock:
        state["n"] += 1
        tok = f"aad-{state['n']}"
        life = state["lifetime"]
        tokens[tok] = (resource, time.time() + life)
        stats["issued"][resource] = stats["issued"].get(resource, 0) + 1
    return tok, life


def valid_aad(tok, resource):
    with lock:
        t = tokens.get(tok)
        if state["refuse"]:
            return False
    return t is not None and t[0] == resource and t[1] > time.time()


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("standin: " + (fmt % args) + "\n")

    def reply(self, code, body=b"", ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def form(self):
        n = int(self.headers.get("Content-Length") or 0)
        return dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))

    def bearer(self):
        a = self.headers.get("Authorization", "")
        return a[7:] if a.startswith("Bearer ") else None

    def identity_down(self):
        with lock:
            stats["identity_calls"] += 1
            return state["down"]

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/control/stats":
            with lock:
                return self.reply(200, dict(stats))
        if u.path == "/metadata/identity/oauth2/token":
            if self.identity_down():
                return self.reply(503, {"error": "unavailable"})
            if self.headers.get("Metadata") != "true" or q.get("api-version") != "2018-02-01":
                return self.reply(400, {"error": "invalid_request"})
            if "client_id" in q:
                stats["client_ids"].append(q["client_id"])
            tok, life = issue(q.get("resource", ""))
            return self.reply(200, {"access_token": tok, "expires_in": str(life),
                                    "expires_on": str(int(time.time()) + life),
                                    "resource": q.get("resource"), "token_type": "Bearer"})
        if u.path == "/msi/token":
            if self.identity_down():
                return self.reply(503, {"error": "unavailable"})
            if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER or q.get("api-version") != "2019-08-01":
                return self.reply(401, {"error": "unauthorized"})
            tok, life = issue(q.get("resource", ""))
            return self.reply(200, {"access_token": tok, "expires_on": int(time.time()) + life,
                                    "resource": q.get("resource"), "token_type": "Bearer"})
        if u.path.startswith("/feed/"):
            tok = self.bearer()
            if tok is None:
                with lock:
                    stats["anonymous"] += 1
                return self.reply(401, b"", headers=[("WWW-Authenticate", "Bearer")])
            if not valid_aad(tok, DEVOPS):
                with lock:
                    stats["refused"] += 1
                return self.reply(401, b"", headers=[("WWW-Authenticate", "Bearer")])
            rel = urllib.parse.unquote(u.path[len("/feed/"):])
            path = os.path.normpath(os.path.join(ROOT, rel))
            if path.startswith(ROOT) and os.path.isdir(path):
                path = os.path.join(path, "index.html")
            if not path.startswith(ROOT) or not os.path.isfile(path):
                return self.reply(404, b"")
            with lock:
                stats["feed_ok"] += 1
            with open(path, "rb") as f:
                body = f.read()
            ctype = "text/html" if path.endswith(".html") else "application/octet-stream"
            return self.reply(200, body, ctype)
        if u.path == "/oauth2/token":
            auth = self.headers.get("Authorization", "")
            ok = False
            if auth.startswith("Basic "):
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                with lock:
                    ok = user == ACR_USER and pw in refresh
            if not ok:
                with lock:
                    stats["refused"] += 1
                return self.reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
            with lock:
                state["n"] += 1
                tok = f"acr-access-{state['n']}"
                access.add(tok)
            return self.reply(200, {"access_token": tok, "expires_in": 300})
        if u.path.startswith("/v2/"):
            return self.proxy()
        return self.reply(404, b"")

    def do_POST(self):
        u = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/control":
            with lock:
                if "lifetime" in q:
                    state["lifetime"] = int(q["lifetime"])
                if "down" in q:
                    state["down"] = q["down"] == "1"
                if "refuse" in q:
                    state["refuse"] = q["refuse"] == "1"
                if q.get("revoke") == "1":
                    tokens.clear()
                    refresh.clear()
                    access.clear()
            return self.reply(200, {})
        if u.path.endswith("/oauth2/v2.0/token"):
            if self.identity_down():
                return self.reply(503, {"error": "temporarily_unavailable"})
            f = self.form()
            with open(ASSERTION_FILE) as af:
                assertion = af.read().strip()
            if (f.get("grant_type") != "client_credentials"
                    or f.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                    or f.get("client_assertion") != assertion
                    or f.get("client_id") != CLIENT_ID):
                return self.reply(401, {"error": "invalid_client"})
            resource = f.get("scope", "").removesuffix("/.default")
            tok, life = issue(resource)
            return self.reply(200, {"token_type": "Bearer", "expires_in": life, "access_token": tok})
        if u.path == "/oauth2/exchange":
            f = self.form()
            if f.get("grant_type") != "access_token" or not valid_aad(f.get("access_token", ""), ACR):
                with lock:
                    stats["refused"] += 1
                return self.reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
            with lock:
                state["n"] += 1
                stats["exchanges"] += 1
                tok = f"acr-refresh-{state['n']}"
                refresh.add(tok)
            return self.reply(200, {"refresh_token": tok})
        return self.reply(404, b"")

    def proxy(self):
        # The first request of a pull carries no token by design (the challenge names the realm).
        tok = self.bearer()
        with lock:
            ok = tok in access
        if not ok:
            host = self.headers.get("Host", "")
            challenge = f'Bearer realm="http://{host}/oauth2/token",service="{host}"'
            return self.reply(401, {"errors": [{"code": "UNAUTHORIZED"}]},
                              headers=[("WWW-Authenticate", challenge)])
        target = urllib.parse.urlparse(REGISTRY)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
        conn.request(self.command, self.path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        with lock:
            stats["v2_ok"] += 1
        keep = [(k, v) for k, v in r.getheaders()
                if k.lower() in ("docker-content-digest", "docker-distribution-api-version", "location", "etag")]
        self.send_response(r.status)
        self.send_header("Content-Type", r.getheader("Content-Type", "application/octet-stream"))
        self.send_header("Content-Length", r.getheader("Content-Length", str(len(body))))
        for k, v in keep:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


ROOT = os.path.realpath(ROOT)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("port", server.server_address[1], flush=True)
server.serve_forever()
