#!/usr/bin/env python3
"""What sharing state costs: tollgate on PostgreSQL and Azurite (the shared store and cache tier
of replicas) against tollgate on its embedded store (redb and the local disk, the named peer),
same binary, same run, on loopback.

    python3 bench/replica_bench.py          from anywhere (finds the repository root)

Uses target/release/tollgate (built if missing), wrk, and the services of scripts/services.sh
(started here when TOLLGATE_TEST_PG is not set; scripts/test.sh installs what they need).

1. Cached page req/s (wrk -t2 -cCONNS, DUR s, REPS runs interleaved, medians): embedded vs
   PostgreSQL. A cached page needs no database round trip.
2. Cached wheel (WHEEL_MIB MiB): steady state from the local disk (wrk, MiB/s) on both; and the
   first GET on a replica whose local disk does not have it: from Azurite (hashed as it streams
   out) vs from the upstream (a static index on loopback) on the embedded store.
3. Admin writes/s: token creations (each its own transaction with its audit entry), 8 clients,
   ADMIN_WRITES in all.
4. Audit append: distinct denials (each its own entry, folding raised out of the way) under wrk
   for DUR s: one embedded gate, against two replicas on PostgreSQL each under the same load at
   once; entries stored per second, and whether the shared chain has no gap.

Knobs (environment): REPS (5), DUR (5), CONNS (16), WHEEL_MIB (64), ADMIN_WRITES (400).
"""
import concurrent.futures
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evidence_bench as eb  # noqa: E402  (its helpers: processes, wrk, the upstream, a gate)

ROOT = eb.ROOT
AFTER = eb.AFTER
REPS = eb.REPS
DUR = eb.DUR
ADMIN_WRITES = int(os.environ.get("ADMIN_WRITES", "400"))
SECRET = "replica-bench-bootstrap"
AZ_PY = os.path.join(ROOT, "target", "tools", "azure", "bin", "python")


def log(msg):
    print("[replica-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def services():
    """The run's PostgreSQL and Azurite: those of the environment, or started here."""
    if os.environ.get("TOLLGATE_TEST_PG"):
        return None
    out = subprocess.run([os.path.join(ROOT, "scripts", "services.sh")], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        k, v = line.removeprefix("export ").split("=", 1)
        os.environ[k] = v
    return os.environ["TOLLGATE_TEST_SERVICES"]


def psql(url, sql):
    return subprocess.run(["psql", "-XAtq", url, "-c", sql], capture_output=True, text=True,
                          check=True).stdout.strip()


class Shared:
    """A database and a container of their own for one configuration."""

    n = 0

    def __init__(self):
        Shared.n += 1
        pg = os.environ["TOLLGATE_TEST_PG"]
        self.db = "bench_%d_%d" % (os.getpid(), Shared.n)
        psql(pg, "CREATE DATABASE %s" % self.db)
        self.url = pg.rsplit("/", 1)[0] + "/" + self.db
        self.container = "bench%d%d" % (os.getpid(), Shared.n)
        subprocess.run([AZ_PY, os.path.join(ROOT, "tests", "support", "azurite.py"), "create",
                        self.container], check=True)

    def config(self):
        return ('[store]\nurl = "%s?sslmode=verify-full"\nca_file = "%s"\n[cache]\nurl = "az://%s/gate"\n'
                % (self.url, os.environ["TOLLGATE_TEST_PG_CA"], self.container))


def gate_env():
    env = dict(os.environ)
    env["AZURE_STORAGE_USE_EMULATOR"] = "true"
    env["AZURITE_BLOB_STORAGE_URL"] = os.environ["TOLLGATE_TEST_AZURITE"]
    env["TOLLGATE_BOOTSTRAP_TOKEN_SHA256"] = hashlib.sha256(SECRET.encode()).hexdigest()
    return env


class Gate(eb.Gate):
    def start(self):
        self.proc = eb.start([self.binary, "serve", "--config", os.path.join(self.dir, "tollgate.toml")],
                             os.path.join(self.dir, "gate.log"), self.port, self.binary, env=gate_env())


def timed_get(port, path):
    t = time.perf_counter()
    status, body = eb.get(port, path)
    assert status == 200, status
    return time.perf_counter() - t, body


def cached_serving(work, up_port, wheel_path, allow, shared):
    log("1-2. cached page and wheel: embedded vs PostgreSQL + Azurite")
    gates = {"embedded": Gate(AFTER, work, "serve-embedded", up_port, allow=allow),
             "postgres": Gate(AFTER, work, "serve-postgres", up_port, shared.config(), allow)}
    for g in gates.values():
        g.start()
        assert eb.get(g.port, wheel_path)[0] == 200
        assert eb.get(g.port, "/simple/hot/")[0] == 200
    time.sleep(3)  # the verified wheel reaches Azurite in the background
    page = {k: [] for k in gates}
    wheel = {k: [] for k in gates}
    for _ in range(REPS):
        for label, g in gates.items():
            page[label].append(eb.wrk("http://127.0.0.1:%d/simple/hot/" % g.port)[0])
            wheel[label].append(eb.wrk("http://127.0.0.1:%d%s" % (g.port, wheel_path))[1])
    for g in gates.values():
        g.stop()
    # The first GET where the local disk does not have the wheel: a fresh replica reads it from
    # Azurite; a fresh embedded gate fetches it from the upstream.
    cold = {"from Azurite (postgres replica)": [], "from the upstream (embedded)": []}
    for r in range(REPS):
        g = Gate(AFTER, work, "cold-postgres-%d" % r, up_port, shared.config(), allow)
        g.start()
        secs, body = timed_get(g.port, wheel_path)
        g.stop()
        cold["from Azurite (postgres replica)"].append((len(body) / 2**20) / secs)
        g = Gate(AFTER, work, "cold-embedded-%d" % r, up_port, allow=allow)
        g.start()
        secs, body = timed_get(g.port, wheel_path)
        g.stop()
        cold["from the upstream (embedded)"].append((len(body) / 2**20) / secs)
    return ({k: statistics.median(v) for k, v in page.items()},
            {k: statistics.median(v) for k, v in wheel.items()},
            {k: statistics.median(v) for k, v in cold.items()})


def admin_writes(work, up_port, shared):
    log("3. admin writes/s (token creations, 8 clients)")
    out = {}
    for label, extra in (("embedded", ""), ("postgres", shared.config())):
        runs = []
        for r in range(REPS):
            g = Gate(AFTER, work, "admin-%s-%d" % (label, r), up_port, extra)
            g.start()

            def one(i, port=g.port):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                body = json.dumps({"role": "reader", "name": "bench-%d" % i})
                c.request("POST", "/admin/v1/tokens", body=body,
                          headers={"Authorization": "Bearer " + SECRET, "Content-Type": "application/json"})
                status = c.getresponse().status
                c.close()
                return status

            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                statuses = list(ex.map(one, range(ADMIN_WRITES)))
            runs.append(ADMIN_WRITES / (time.perf_counter() - t))
            g.stop()
            assert all(s == 201 for s in statuses), set(statuses)
        out[label] = statistics.median(runs)
        log("%s: %.0f writes/s" % (label, out[label]))
    return out


def audit_append(work, up_port):
    log("4. audit append under load: one embedded gate vs two replicas on one database")
    script = os.path.join(work, "deny.lua")
    with open(script, "w") as f:
        f.write(eb.DENY_LUA)
    unfold = '[audit]\nmax_denials_per_client = "100000000/s"\n'
    out = {"embedded": [], "postgres, 2 replicas": []}
    gaps = 0
    for r in range(REPS):
        g = Gate(AFTER, work, "append-embedded-%d" % r, up_port, unfold)
        g.start()
        eb.wrk("http://127.0.0.1:%d/" % g.port, script)
        g.stop()
        out["embedded"].append(eb.count_entries(g) / DUR)
        shared = Shared()
        pair = [Gate(AFTER, work, "append-pg-%d-%s" % (r, n), up_port, unfold + shared.config()) for n in "ab"]
        for g in pair:
            g.start()
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda g: eb.wrk("http://127.0.0.1:%d/" % g.port, script), pair))
        for g in pair:
            g.stop()
        n, lo, hi = (int(x or 0) for x in psql(shared.url, "SELECT count(*), min(seq), max(seq) FROM audit").split("|"))
        gaps += 0 if n == hi - lo + 1 else 1
        out["postgres, 2 replicas"].append(n / DUR)
    return {k: statistics.median(v) for k, v in out.items()}, gaps


def main():
    if not os.access(AFTER, os.X_OK):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    started = services()
    work = tempfile.mkdtemp(prefix="replica-bench-")
    try:
        up_port, wheel_path, allow = eb.upstream(work)
        page, wheel, cold = cached_serving(work, up_port, wheel_path, allow, Shared())
        writes = admin_writes(work, up_port, Shared())
        append, gaps = audit_append(work, up_port)
    finally:
        for p in eb.PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)
        if started:
            subprocess.run([os.path.join(ROOT, "scripts", "services.sh"), "stop", started])
    print("\n== replica benchmark (loopback; medians of %d; postgres/embedded ratios) ==" % REPS)
    print("cached page:                     embedded %7.0f req/s, postgres %7.0f req/s (x%.2f)"
          % (page["embedded"], page["postgres"], page["postgres"] / page["embedded"]))
    print("cached %d MiB wheel, local disk: embedded %7.0f MiB/s, postgres %7.0f MiB/s (x%.2f)"
          % (eb.WHEEL_MIB, wheel["embedded"], wheel["postgres"], wheel["postgres"] / wheel["embedded"]))
    a, u = cold["from Azurite (postgres replica)"], cold["from the upstream (embedded)"]
    print("first GET, not on the local disk: from Azurite %5.0f MiB/s, from the upstream %5.0f MiB/s (x%.2f)"
          % (a, u, a / u))
    print("admin writes:                    embedded %7.0f /s,     postgres %7.0f /s (x%.2f)"
          % (writes["embedded"], writes["postgres"], writes["postgres"] / writes["embedded"]))
    e, p = append["embedded"], append["postgres, 2 replicas"]
    print("audit append under load:         embedded %7.0f entries/s, 2 replicas on postgres %7.0f entries/s (x%.2f); runs with a gap in the chain: %d"
          % (e, p, p / e, gaps))


if __name__ == "__main__":
    main()
