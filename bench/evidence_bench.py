#!/usr/bin/env python3
"""What keeping evidence costs, on loopback only: tollgate as it is (AFTER) against a build
without cache re-checks, signed checkpoints or denial folding (BEFORE, the named peer), in the
same run, back to back.

    python3 bench/evidence_bench.py BEFORE_BINARY     from anywhere (finds the repository root)

BEFORE_BINARY is a release build of the earlier commit (for example b9bbf6b:
`git worktree add /tmp/before b9bbf6b && cargo build --release` there). AFTER is
target/release/tollgate.

1. Cached wheel (WHEEL_MIB MiB) and cached page: the first GET after a restart (median of REPS
   restarts; AFTER hashes the file as it streams, holding the last chunk back), then steady
   state with wrk (-t2 -cCONNS, DUR s, REPS runs, medians): MiB/s and requests/s.
2. Audit append: distinct denied /simple/<name>/ requests/s (wrk, each request a new name, so
   each is its own audit entry; folding raised out of the way) for BEFORE, AFTER unkeyed and
   AFTER with an Ed25519 key and checkpoint_every = 1s; entries stored per second.
3. Store growth per DENIALS distinct denials from one client: BEFORE, AFTER with folding off,
   AFTER with the default max_denials_per_client (1000/m).

Knobs (environment): REPS (5), DUR (5), CONNS (16), WHEEL_MIB (64), DENIALS (10000).
"""
import concurrent.futures
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AFTER = os.path.join(ROOT, "target", "release", "tollgate")
REPS = int(os.environ.get("REPS", "5"))
DUR = int(os.environ.get("DUR", "5"))
CONNS = int(os.environ.get("CONNS", "16"))
WHEEL_MIB = int(os.environ.get("WHEEL_MIB", "64"))
DENIALS = int(os.environ.get("DENIALS", "10000"))
PROCS = []


def log(msg):
    print("[evidence-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit("%s exited: see its log" % what)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("%s did not listen" % what)


def start(cmd, log_path, port, what, env=None):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=env)
    PROCS.append(p)
    wait_port(port, p, what)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def get(port, path, accept=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path, headers={"Accept": accept} if accept else {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def wrk(url, script=None):
    cmd = ["wrk", "-t2", "-c%d" % CONNS, "-d%ds" % DUR]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # "N requests in T s, X read": X has more digits than Transfer/sec's two decimals.
    m = re.search(r"requests in ([\d.]+)(m?s), ([\d.]+)(\w+) read", out)
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}[m.group(4)]
    return rps, float(m.group(3)) * scale / secs


class Gate:
    """A gate over `work/name` with `extra` config, started by `binary`."""

    def __init__(self, binary, work, name, upstream_port, extra="", allow=""):
        self.binary, self.dir = binary, os.path.join(work, name)
        os.makedirs(os.path.join(self.dir, "allowlists"), exist_ok=True)
        with open(os.path.join(self.dir, "allowlists", "a.toml"), "w") as f:
            f.write(allow)
        self.port = free_port()
        with open(os.path.join(self.dir, "tollgate.toml"), "w") as f:
            f.write(
                'listen = "127.0.0.1:%d"\ndata_dir = "data"\nallowlist_dir = "allowlists"\n'
                '[pypi]\npage_ttl = "1h"\n[[pypi.index]]\nname = "local"\nurl = "http://127.0.0.1:%d/simple/"\n%s'
                % (self.port, upstream_port, extra)
            )
        self.proc = None

    def start(self):
        self.proc = start([self.binary, "serve", "--config", os.path.join(self.dir, "tollgate.toml")],
                          os.path.join(self.dir, "gate.log"), self.port, self.binary)

    def stop(self):
        stop(self.proc)

    def store_bytes(self):
        return os.path.getsize(os.path.join(self.dir, "data", "tollgate.redb"))


def upstream(work):
    """A static PEP 503 index with one big wheel and a page of 200 files."""
    root = os.path.join(work, "upstream")
    files = os.path.join(root, "files")
    os.makedirs(files, exist_ok=True)
    wheel = "hot-1.0-py3-none-any.whl"
    data = os.urandom(WHEEL_MIB << 20)
    with open(os.path.join(files, wheel), "wb") as f:
        f.write(data)
    sha = hashlib.sha256(data).hexdigest()
    links = ['<a href="/files/%s#sha256=%s">%s</a>' % (wheel, sha, wheel)]
    for i in range(200):
        name = "hot-0.%d-py3-none-any.whl" % i
        links.append('<a href="/files/%s#sha256=%s">%s</a>' % (name, hashlib.sha256(b"%d" % i).hexdigest(), name))
    os.makedirs(os.path.join(root, "simple", "hot"), exist_ok=True)
    with open(os.path.join(root, "simple", "hot", "index.html"), "w") as f:
        f.write("<html><body>%s</body></html>" % "\n".join(links))
    port = free_port()
    start([sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", root, str(port)],
          os.path.join(work, "upstream.log"), port, "upstream")
    allow = '[[package]]\nname = "hot"\nversion = "1.0"\nsha256 = ["%s"]\n' % sha
    return port, "/files/hot/%s/%s" % (sha, wheel), allow


def cached_serving(before, work, up_port, wheel_path, allow):
    log("1. cached wheel and page: first GET after restart, then steady state (interleaved)")
    gates = {label: Gate(binary, work, "serve-" + label, up_port, allow=allow)
             for label, binary in (("BEFORE", before), ("AFTER", AFTER))}
    for g in gates.values():
        g.start()
        assert get(g.port, wheel_path)[0] == 200  # fetched, verified and cached
        assert get(g.port, "/simple/hot/")[0] == 200
        g.stop()
    first = {label: ([], []) for label in gates}
    for _ in range(REPS):
        for label, g in gates.items():
            g.start()
            t = time.perf_counter()
            status, body = get(g.port, wheel_path)
            first[label][0].append(time.perf_counter() - t)
            assert status == 200 and len(body) == WHEEL_MIB << 20
            t = time.perf_counter()
            assert get(g.port, "/simple/hot/")[0] == 200
            first[label][1].append(time.perf_counter() - t)
            g.stop()
    for g in gates.values():
        g.start()
        get(g.port, wheel_path)
    steady = {label: ([], []) for label in gates}
    for _ in range(REPS):
        for label, g in gates.items():
            steady[label][0].append(wrk("http://127.0.0.1:%d%s" % (g.port, wheel_path))[1])
            steady[label][1].append(wrk("http://127.0.0.1:%d/simple/hot/" % g.port)[0])
    for g in gates.values():
        g.stop()
    out = {}
    for label in gates:
        out[label] = dict(
            first_wheel_ms=statistics.median(first[label][0]) * 1000,
            first_page_ms=statistics.median(first[label][1]) * 1000,
            wheel_mib_s=statistics.median(steady[label][0]),
            page_rps=statistics.median(steady[label][1]),
        )
        log("%s: %s" % (label, out[label]))
    return out


DENY_LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/simple/deny-" .. math.random(1, 1000000000) .. "-" .. n .. "/")
end
"""


def count_entries(g):
    out = subprocess.run([AFTER, "audit", "export", "--config", os.path.join(g.dir, "tollgate.toml")],
                         capture_output=True, text=True)
    return sum(1 for l in out.stdout.splitlines() if not l.startswith('{"checkpoint"'))


def audit_append(before, work, up_port, key):
    log("2. audit append: distinct denials/s")
    script = os.path.join(work, "deny.lua")
    with open(script, "w") as f:
        f.write(DENY_LUA)
    unfold = '[audit]\nmax_denials_per_client = "100000000/s"\n'
    out = {}
    for label, binary, extra in (
        ("BEFORE", before, ""),
        ("AFTER unkeyed", AFTER, unfold),
        ("AFTER keyed, checkpoint_every 1s", AFTER, unfold + 'signing_key_file = "%s"\ncheckpoint_every = "1s"\n' % key),
    ):
        runs = []
        for r in range(REPS):
            g = Gate(binary, work, "append-%s-%d" % (label.replace(" ", "_").replace(",", ""), r), up_port, extra)
            g.start()
            rps, _ = wrk("http://127.0.0.1:%d/" % g.port, script)
            g.stop()
            runs.append((rps, count_entries(g) / DUR))
        out[label] = dict(requests_s=statistics.median(r[0] for r in runs),
                          entries_s=statistics.median(r[1] for r in runs))
        log("%s: %s" % (label, out[label]))
    return out


def store_growth(before, work, up_port):
    log("3. store growth per %d distinct denials from one client" % DENIALS)
    out = {}
    for label, binary, extra in (
        ("BEFORE", before, ""),
        ("AFTER folding off", AFTER, '[audit]\nmax_denials_per_client = "100000000/s"\n'),
        ("AFTER default (1000/m)", AFTER, ""),
    ):
        g = Gate(binary, work, "growth-" + label.split()[0] + str(len(extra)), up_port, extra)
        g.start()
        time.sleep(0.5)
        size0 = g.store_bytes()

        def one(i, port=g.port):
            return get(port, "/simple/growth-%d/" % i)[0]

        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            statuses = list(ex.map(one, range(DENIALS)))
        assert all(s == 403 for s in statuses)
        g.stop()
        out[label] = dict(bytes=g.store_bytes() - size0, entries=count_entries(g))
        log("%s: %s" % (label, out[label]))
    return out


def main():
    if len(sys.argv) != 2 or not os.access(sys.argv[1], os.X_OK):
        raise SystemExit(__doc__)
    before = os.path.abspath(sys.argv[1])
    if not os.access(AFTER, os.X_OK):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    work = tempfile.mkdtemp(prefix="evidence-bench-")
    try:
        key = os.path.join(work, "audit-key.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
        up_port, wheel_path, allow = upstream(work)
        serving = cached_serving(before, work, up_port, wheel_path, allow)
        append = audit_append(before, work, up_port, key)
        growth = store_growth(before, work, up_port)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)
    b, a = serving["BEFORE"], serving["AFTER"]
    print("\n== evidence benchmark (loopback; medians of %d; AFTER/BEFORE ratios) ==" % REPS)
    print("cached %d MiB wheel, first GET after restart: BEFORE %.0f ms, AFTER %.0f ms (x%.2f)"
          % (WHEEL_MIB, b["first_wheel_ms"], a["first_wheel_ms"], a["first_wheel_ms"] / b["first_wheel_ms"]))
    print("cached page, first GET after restart:       BEFORE %.1f ms, AFTER %.1f ms (x%.2f)"
          % (b["first_page_ms"], a["first_page_ms"], a["first_page_ms"] / b["first_page_ms"]))
    print("cached wheel steady state:                  BEFORE %.0f MiB/s, AFTER %.0f MiB/s (x%.2f)"
          % (b["wheel_mib_s"], a["wheel_mib_s"], a["wheel_mib_s"] / b["wheel_mib_s"]))
    print("cached page steady state:                   BEFORE %.0f req/s, AFTER %.0f req/s (x%.2f)"
          % (b["page_rps"], a["page_rps"], a["page_rps"] / b["page_rps"]))
    base = append["BEFORE"]
    for label, v in append.items():
        print("audit append, %-33s %6.0f denials/s, %6.0f entries/s (x%.2f)"
              % (label + ":", v["requests_s"], v["entries_s"], v["entries_s"] / base["entries_s"]))
    for label, v in growth.items():
        print("store growth per %d denials, %-23s %6.2f MiB, %5d entries"
              % (DENIALS, label + ":", v["bytes"] / 2**20, v["entries"]))


if __name__ == "__main__":
    main()
