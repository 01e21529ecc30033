#!/usr/bin/env python3
"""The admin API and audit-log benchmark, on loopback only.

    python3 bench/admin_bench.py          from anywhere (it finds the repository root)

1. Admin writes: POST /admin/v1/packages (each write validates every rule, stores it durably,
   applies it and waits for its audit entry), WRITES in total from WRITERS concurrent clients:
   writes/s, median and p99 latency.
2. Audit append throughput while the gate serves under load (wrk -t2 -cCONNS, DUR s):
   a. cached page requests (identical decisions: aggregated into counted entries);
   b. requests for DISTINCT projects that are not on the allowlist (every request its own deny
      entry): entries stored per second, read from the chain head before and after.
3. Cached-page requests/s with MILLION audit entries already in the log vs an empty log (two
   gates side by side, same config, runs interleaved, medians of REPS). Target >= 0.9.

Knobs (environment): WRITES (300), WRITERS (4), MILLION (1000000), REPS (3), DUR (5), CONNS (16).
The log is filled by `cargo run --release --example audit_fill` (distinct, chained entries).
"""
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = os.path.join(ROOT, "bench", "work", "admin")
WRITES = int(os.environ.get("WRITES", "300"))
WRITERS = int(os.environ.get("WRITERS", "4"))
MILLION = int(os.environ.get("MILLION", "1000000"))
REPS = int(os.environ.get("REPS", "3"))
DUR = int(os.environ.get("DUR", "5"))
CONNS = int(os.environ.get("CONNS", "16"))
TG = os.path.join(ROOT, "target", "release", "tollgate")
FILL = os.path.join(ROOT, "target", "release", "examples", "audit_fill")
TOKEN = "tg_admin-bench-token"
PROCS = []


def log(msg):
    print("[admin-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def die(msg):
    log("FAILED: " + msg)
    sys.exit(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def static_upstream(root):
    """A PEP 503 tree on loopback (serving only the one page the gate caches)."""
    class H(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=root, **k)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def start_gate(name, upstream_port, sha):
    d = os.path.join(W, name)
    os.makedirs(os.path.join(d, "allowlists"), exist_ok=True)
    with open(os.path.join(d, "allowlists", "bench.toml"), "w") as f:
        f.write('[[package]]\nname = "bench-pkg"\nversion = "1.0"\nsha256 = ["%s"]\n' % sha)
    with open(os.path.join(d, "config.toml"), "w") as f:
        f.write('listen = "127.0.0.1:0"\ndata_dir = "data"\nallowlist_dir = "allowlists"\n[pypi]\npage_ttl = "1h"\n'
                '[[pypi.index]]\nname = "local"\nurl = "http://127.0.0.1:%d/simple/"\n' % upstream_port)
    out = open(os.path.join(d, "stdout"), "w")
    env = dict(os.environ, TOLLGATE_BOOTSTRAP_TOKEN_SHA256=hashlib.sha256(TOKEN.encode()).hexdigest(),
               RUST_LOG="warn")
    p = subprocess.Popen([TG, "serve", "--config", os.path.join(d, "config.toml")], stdout=out,
                         stderr=open(os.path.join(d, "tollgate.log"), "w"), env=env)
    PROCS.append(p)
    for _ in range(1200):
        with open(os.path.join(d, "stdout")) as f:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    die("tollgate %s did not start (see %s/tollgate.log)" % (name, d))


def request(port, method, path, body=None, token=TOKEN):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": "Bearer " + token}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    out = r.read()
    c.close()
    return r.status, out


def wrk(url, script=None):
    report = os.path.join(W, "report.lua")
    with open(report, "w") as f:
        if script:
            f.write(script)
        f.write('done = function(s, l, r) io.write(string.format("WRK %.1f %d %d %d\\n", s.requests / (s.duration / 1e6), '
                's.requests, s.errors.status, s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout)) end\n')
    out = subprocess.run(["wrk", "-t2", "-c%d" % CONNS, "-d%ds" % DUR, "--timeout", "30s", "-s", report, url],
                         capture_output=True, text=True).stdout
    m = re.search(r"^WRK (\S+) (\d+) (\d+) (\d+)$", out, re.M)
    if not m or int(m.group(2)) == 0:
        die("wrk gave no result for %s: %s" % (url, out))
    return float(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))


def head_seq(port):
    status, body = request(port, "GET", "/admin/v1/audit/verify")
    if status != 200:
        die("audit verify: %d %s" % (status, body[:200]))
    v = json.loads(body)
    if not v["intact"]:
        die("the audit chain is broken: %s" % v)
    return v["head_seq"]


def main():
    for cmd, pkg in [("wrk", "wrk")]:
        if not shutil.which(cmd):
            log("installing " + pkg)
            subprocess.run(["apt-get", "install", "-y", "-qq", pkg], check=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
    log("building tollgate and the audit filler (release)")
    subprocess.run(["cargo", "build", "--release", "--bin", "tollgate", "--example", "audit_fill"], cwd=ROOT, check=True)
    shutil.rmtree(W, ignore_errors=True)
    os.makedirs(W)
    with open("/proc/loadavg") as f:
        log("load average at start: %s on %d cores" % (" ".join(f.read().split()[:3]), os.cpu_count()))

    # The upstream: one project page with one file link (the page is what gets cached).
    up = os.path.join(W, "upstream")
    os.makedirs(os.path.join(up, "simple", "bench-pkg"))
    sha = hashlib.sha256(b"bench").hexdigest()
    with open(os.path.join(up, "simple", "bench-pkg", "index.html"), "w") as f:
        f.write('<html><body><a href="../../files/bench_pkg-1.0-py3-none-any.whl#sha256=%s">'
                'bench_pkg-1.0-py3-none-any.whl</a></body></html>' % sha)
    up_port = static_upstream(up)

    # The gate with a full log is prepared first (filling is not measured).
    log("filling an audit log with %d entries" % MILLION)
    t0 = time.time()
    subprocess.run([FILL, os.path.join(W, "full", "data"), str(MILLION)], check=True, stdout=subprocess.DEVNULL)
    log("   filled in %.1f s" % (time.time() - t0))
    empty, empty_port = start_gate("empty", up_port, sha)
    full, full_port = start_gate("full", up_port, sha)

    # 1. admin writes
    log("1. %d admin writes from %d clients" % (WRITES, WRITERS))
    lat = []
    lock = threading.Lock()
    errors = []

    def writer(k):
        for i in range(k, WRITES, WRITERS):
            body = {"name": "bench-%d" % i, "version": "1.0", "sha256": [hashlib.sha256(b"%d" % i).hexdigest()], "index": "local"}
            t = time.perf_counter()
            status, out = request(empty_port, "POST", "/admin/v1/packages", body)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                if status != 201:
                    errors.append((status, out[:200]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        die("admin writes failed: %s" % errors[:3])
    lat.sort()
    writes = {"per_s": WRITES / took, "p50": statistics.median(lat) * 1000, "p99": lat[int(len(lat) * 0.99) - 1] * 1000}

    # 2. audit append under load
    page = "/simple/bench-pkg/"
    for port in (empty_port, full_port):
        status, _ = request(port, "GET", page)
        if status != 200:
            die("the cached page is not served (%d)" % status)
    log("2a. cached page under load (identical decisions), %ds" % DUR)
    before = head_seq(empty_port)
    rps_same, n_same, _, _ = wrk("http://127.0.0.1:%d%s" % (empty_port, page))
    after = head_seq(empty_port)
    same = {"rps": rps_same, "requests": n_same, "entries": after - before}
    log("2b. distinct denied projects under load (one entry each), %ds" % DUR)
    distinct_script = 'counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format("GET", "/simple/nope-" .. math.random(1, 1000000000) .. "-" .. counter .. "/")\nend\n'
    before = head_seq(empty_port)
    rps_distinct, n_distinct, status_errors, _ = wrk("http://127.0.0.1:%d/" % empty_port, distinct_script)
    time.sleep(1)
    after = head_seq(empty_port)
    distinct = {"rps": rps_distinct, "requests": n_distinct, "entries": after - before, "non2xx": status_errors}

    # 3. cached page with a large log vs an empty one, interleaved
    log("3. cached page req/s, %d x %ds per gate, full log (%d entries) vs empty" % (REPS, DUR, MILLION))
    runs = {"empty": [], "full": []}
    for _ in range(REPS):
        for name, port in (("empty", empty_port), ("full", full_port)):
            runs[name].append(wrk("http://127.0.0.1:%d%s" % (port, page))[0])
    med = {k: statistics.median(v) for k, v in runs.items()}

    print("\n## tollgate admin and audit benchmark\n")
    print("| admin writes (POST /admin/v1/packages, %d clients) | value |" % WRITERS)
    print("|---|---|")
    print("| writes/s | %.1f |" % writes["per_s"])
    print("| median latency, ms | %.1f |" % writes["p50"])
    print("| p99 latency, ms | %.1f |" % writes["p99"])
    print("\n| audit under load (wrk -t2 -c%d, %ds) | req/s | requests | entries stored | entries/s |" % (CONNS, DUR))
    print("|---|---|---|---|---|")
    print("| cached page, identical decisions (aggregated) | %.0f | %d | %d | %.0f |" % (same["rps"], same["requests"], same["entries"], same["entries"] / DUR))
    print("| distinct denied projects (one entry each) | %.0f | %d | %d | %.0f |" % (distinct["rps"], distinct["requests"], distinct["entries"], distinct["entries"] / DUR))
    print("\n| cached page req/s | median | runs |")
    print("|---|---|---|")
    for k in ("empty", "full"):
        print("| %s log | %.0f | %s |" % (k if k == "empty" else "%d-entry" % MILLION, med[k], ", ".join("%.0f" % x for x in runs[k])))
    print("\nratio full / empty: %.2f (target >= 0.9)" % (med["full"] / med["empty"]))


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
