#!/usr/bin/env python3
"""An upstream index that misbehaves on purpose, for the fault tests.

usage: liar_upstream.py WHEEL_DIR   (prints "port N" on stdout once listening)

Projects (each page is PEP 691 JSON unless said otherwise):
  err500     the page answers 500
  badjson    the page is not JSON although it says so
  slow       the page takes 5 s
  offhost    the page links its file to a host that is not a configured file host, and lists a
             second off-host file whose name holds a line break and a forged log line
  truncated  the file declares its full length and sends half, then closes
  longer     the page lists a size, the file sends more bytes than that
  good       a well-behaved page and file
  slowfile   the file takes 1 s before its first byte (for concurrent first requests)
  badhtml    an HTML page that is not UTF-8
  backdated  a well-behaved page whose file says it was uploaded in 1999 (PEP 700 upload-time)
  offport-N  a page with no hash whose file link is on 127.0.0.1 but port N (another service)
  twometa    a wheel holding its own twometa-1.0.dist-info/METADATA and, after it, a
             twometa-6.6.dist-info/METADATA of another version
  ambiguous  a wheel holding ambiguous-1.0.dist-info/METADATA twice, with different contents
  zipbomb    a wheel whose METADATA declares 100 bytes and inflates to 8 MiB
  corrupt    a wheel whose METADATA's deflate stream is garbage
  badoffset  a wheel whose central directory puts METADATA past the end of the file
  huge       a page listing 50,000 files
  many       a page listing 300 files of releases 1.0.N (made-up hashes)
  manynohash a page listing 300 files of releases 1.0.N with neither hash nor size
  bigfile    a 2 MiB file, its size declared on the page
  bignohash  a 2 MiB file listed with neither hash nor size
  authed     the page needs Basic user:secret; the file link redirects to http://localhost:PORT
             (another origin on the same machine), which must never see the credentials
Every request is logged on stderr as "REQ <host> <path> auth=<yes|no>".
"""
import hashlib
import io
import json
import os
import sys
import time
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WHEELS = sys.argv[1]


def crafted(project):
    """Wheels whose METADATA is not what it seems (deterministic bytes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name on purpose
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            def put(name, data):
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
            put(f"{project}/__init__.py", b"")
            if project == "twometa":
                put("twometa-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: twometa\nVersion: 1.0\n")
                put("twometa-6.6.dist-info/METADATA", b"Metadata-Version: 2.1\nName: twometa\nVersion: 6.6\n")
            elif project == "ambiguous":
                put("ambiguous-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: ambiguous\nVersion: 1.0\n")
                put("ambiguous-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
            elif project == "zipbomb":
                put("zipbomb-1.0.dist-info/METADATA", b"A" * (8 << 20))
            else:
                put(f"{project}-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: x\nVersion: 1.0\n" * 50)
    data = bytearray(buf.getvalue())
    if project == "zipbomb":
        # Rewrite the declared uncompressed size (local header and central directory) to 100.
        for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            i = data.find(sig)
            while i >= 0:
                n = int.from_bytes(data[i + (26 if sig == b"PK\x03\x04" else 28):][:2], "little")
                start = i + (30 if sig == b"PK\x03\x04" else 46)
                if bytes(data[start:start + n]).endswith(b"METADATA"):
                    data[i + off:i + off + 4] = (100).to_bytes(4, "little")
                i = data.find(sig, i + 4)
    for sig, name_len_at, header in ((b"PK\x03\x04", 26, 30), (b"PK\x01\x02", 28, 46)):
        i = data.find(sig)
        while i >= 0:
            n = int.from_bytes(data[i + name_len_at:][:2], "little")
            extra = int.from_bytes(data[i + name_len_at + 2:][:2], "little")
            start = i + header
            if bytes(data[start:start + n]).endswith(b"METADATA"):
                if project == "corrupt" and sig == b"PK\x03\x04":
                    body = start + n + extra
                    data[body:body + 16] = b"\xff" * 16  # an invalid deflate block type
                if project == "badoffset" and sig == b"PK\x01\x02":
                    data[i + 42:i + 46] = (len(data) + 4096).to_bytes(4, "little")
            i = data.find(sig, i + 4)
    return bytes(data)


def wheel(project):
    name = f"{project}-1.0-py3-none-any.whl"
    if project in ("bigfile", "bignohash"):
        return name, b"\0" * (2 << 20)
    if project in ("twometa", "ambiguous", "zipbomb", "corrupt", "badoffset"):
        return name, crafted(project)
    with open(os.path.join(WHEELS, "good-1.0-py3-none-any.whl"), "rb") as f:
        data = f.read()
    return name, data


class H(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def log_request_line(self):
        auth = "yes" if self.headers.get("Authorization") else "no"
        sys.stderr.write("REQ %s %s auth=%s\n" % (self.headers.get("Host"), self.path, auth))
        sys.stderr.flush()

    def send(self, code, body, ctype="application/vnd.pypi.simple.v1+json", length=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.log_request_line()
        parts = [p for p in self.path.split("/") if p]
        port = self.server.server_address[1]
        if len(parts) == 2 and parts[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/files/{parts[1]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if len(parts) == 2 and parts[0] == "simple":
            project = parts[1]
            if project == "badhtml":
                return self.send(200, b"<a href='x'>\xff\xfe\x00</a>", "text/html")
            if project == "authed" and self.headers.get("Authorization") != "Basic dXNlcjpzZWNyZXQ=":
                return self.send(401, b"auth", "text/plain")
            if project == "err500":
                return self.send(500, b"boom", "text/plain")
            if project == "badjson":
                return self.send(200, b"{not json")
            if project == "slow":
                time.sleep(5)
            if project in ("huge", "many", "manynohash"):
                n = 50_000 if project == "huge" else 300
                files = [{"filename": f"{project}-1.0.{i}-py3-none-any.whl",
                          "url": f"/files/{project}-1.0.{i}-py3-none-any.whl",
                          "hashes": {} if project == "manynohash" else {"sha256": hashlib.sha256(b"%d" % i).hexdigest()}}
                         for i in range(n)]
                return self.send(200, json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": files}).encode())
            name, data = wheel(project)
            url = f"http://127.0.0.1:{port}/files/{name}"
            if project == "offhost":
                url = f"https://evil.example/{name}"
            if project == "authed":
                url = f"http://127.0.0.1:{port}/redirect/{name}"
            if project.startswith("offport-"):
                url = f"http://127.0.0.1:{project.split('-', 1)[1]}/files/{name}"
            size = len(data) - 100 if project == "longer" else len(data)
            page = {
                "meta": {"api-version": "1.1"},
                "name": project,
                "files": [{"filename": name, "url": url, "hashes": {"sha256": hashlib.sha256(data).hexdigest()}, "size": size}],
            }
            if project.startswith("offport-") or project == "bignohash":
                del page["files"][0]["hashes"]
            if project == "bignohash":
                del page["files"][0]["size"]
            if project == "backdated":
                page["files"][0]["upload-time"] = "1999-01-01T00:00:00.000000Z"
            if project == "offhost":
                # A file name that would start a log line of its own, shaped as a checkpoint.
                forged = "x-1.0.whl\nFORGED 2026-12-01T00:00:00Z  INFO tollgate::audit: audit checkpoint checkpoint={}\n"
                page["files"].append({"filename": forged, "url": "https://evil.example/x", "hashes": {"sha256": "0" * 64}})
            return self.send(200, json.dumps(page).encode())
        if len(parts) == 2 and parts[0] == "files":
            project = parts[1].split("-")[0]
            _, data = wheel(project)
            if project == "slowfile":
                time.sleep(1)
            if project == "truncated":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            return self.send(200, data, "application/octet-stream")
        self.send(404, b"not found", "text/plain")


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
