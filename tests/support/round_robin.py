"""A load balancer for the replica tests: an HTTP reverse proxy on 127.0.0.1 that sends each
request (not each connection) to the next of its backends in turn, streams the answer back, and
logs one line per request: `<backend port> <method> <path> <status>`. Prints "port N" once it
listens. A backend that cannot be reached is skipped for that request (as a load balancer's
health check would), so a killed replica is routed around.

usage: round_robin.py LOGFILE PORT [PORT ...]"""

import http.client
import http.server
import itertools
import sys
import threading

LOG = open(sys.argv[1], "a", buffering=1)
BACKENDS = [int(p) for p in sys.argv[2:]]
TURN = itertools.cycle(range(len(BACKENDS)))
LOCK = threading.Lock()
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection"}


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        with LOCK:
            start = next(TURN)
        last_error = None
        for i in range(len(BACKENDS)):
            port = BACKENDS[(start + i) % len(BACKENDS)]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
            except OSError as e:
                last_error = e
                conn.close()
                continue
            LOG.write(f"{port} {self.command} {self.path} {resp.status}\n")
            self.send_response_only(resp.status, resp.reason)
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
            for k, v in out_headers:
                self.send_header(k, v)
            chunked = resp.getheader("Content-Length") is None and self.command != "HEAD" \
                and resp.status not in (204, 304)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while self.command != "HEAD":
                    data = resp.read1(256 * 1024)
                    if not data:
                        break
                    if chunked:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    else:
                        self.wfile.write(data)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                # The backend died mid-answer: the client sees the connection cut.
                self.close_connection = True
            conn.close()
            return
        LOG.write(f"- {self.command} {self.path} 502\n")
        msg = f"no backend answered: {last_error}".encode()
        self.send_response(502)
        self.send_header("Content-Length", str(len(msg)))
        self.end_headers()
        self.wfile.write(msg)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = forward


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
srv.daemon_threads = True
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
