#!/usr/bin/env python3
"""What provenance rules and a large vulnerability database cost the index: the same binary,
same run, on loopback, against itself without them (the named peer).

    python3 bench/provenance_bench.py          from anywhere (finds the repository root)

Uses target/release/tollgate (built if missing) and wrk. The upstream is a static index of the
real attested distributions of tests/fixtures/pep740 with their real provenance objects
(tests/support/pep740_index.py).

1. Cached page req/s (wrk -t2 -cCONNS, DUR s, REPS runs interleaved, medians) of a project whose
   files are pinned: plain exact pins (peer) vs the same pins with a Trusted Publisher (each
   file's provenance verified and kept) and `[vulnerabilities]` holding ADVISORIES synthetic
   OSV records (a zip), some of them about this very project. Goal: >= 0.9x.
2. Time to load that database: the gate's own figure ("vulnerability database loaded", ms) at
   start and at each of REPS reloads (SIGHUP); median.

Knobs (environment): REPS (5), DUR (5), CONNS (16), ADVISORIES (100000).
"""
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evidence_bench as eb  # noqa: E402  (its helpers: processes, wrk, a gate)

ROOT = eb.ROOT
ADVISORIES = int(os.environ.get("ADVISORIES", "100000"))
PROJECT = "circleci-sign-publish-example"
WHEEL = "circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl"


def log(msg):
    print("[provenance-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def database(path):
    """ADVISORIES OSV records over 20,000 projects; 50 name PROJECT, at versions it is not."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(ADVISORIES):
            name = PROJECT if i % 2000 == 0 else "project-%d" % (i % 20000)
            rec = {
                "schema_version": "1.6.0",
                "id": "BENCH-%06d" % i,
                "aliases": ["CVE-2099-%06d" % i],
                "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "affected": [{
                    "package": {"ecosystem": "PyPI", "name": name},
                    "ranges": [{"type": "ECOSYSTEM", "events": [
                        {"introduced": "1.%d" % (i % 7)}, {"fixed": "1.%d.5" % (i % 7)}]}],
                    "versions": ["1.%d" % (i % 7), "1.%d.1" % (i % 7)],
                }],
                "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}],
            }
            z.writestr("BENCH-%06d.json" % i, json.dumps(rec))


def main():
    if not os.access(eb.AFTER, os.X_OK):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    work = tempfile.mkdtemp(prefix="provenance-bench-")
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "support", "pep740_index.py"),
                              os.path.join(ROOT, "tests", "fixtures", "pep740"), os.path.join(work, "up")],
                             capture_output=True, text=True, check=True).stdout
        sha = json.loads(out)[WHEEL]
        port = eb.free_port()
        eb.start([sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", os.path.join(work, "up"), str(port)],
                 os.path.join(work, "upstream.log"), port, "upstream")
        log("writing %d advisories" % ADVISORIES)
        db = os.path.join(work, "osv.zip")
        database(db)
        root = os.path.join(ROOT, "tests", "fixtures", "pep740", "trust", "production.trusted_root.json")
        pin = '[[package]]\nname = "%s"\nversion = "0.0.1.dev137"\nsha256 = ["%s"]\n' % (PROJECT, sha)
        publisher = ('publisher = { circleci = "fdd9283f-e619-46af-8f9c-851f7d3e8b2b", '
                     'pipeline_definition_id = "8e4f8ab2-8d7c-4827-9f15-de076d6d647f" }\n')
        peer = eb.Gate(eb.AFTER, work, "peer", port, allow=pin)
        full = eb.Gate(eb.AFTER, work, "full", port, allow=pin + publisher,
                       extra='[vulnerabilities]\ndatabase = "%s"\nblock = "low"\n' % db)
        # trusted_root is a top-level key: it goes before the tables eb.Gate writes.
        cfg = os.path.join(full.dir, "tollgate.toml")
        text = open(cfg).read()
        open(cfg, "w").write('trusted_root = "%s"\n' % root + text)
        for g in (peer, full):
            g.start()
        # The full gate lists the wheel once its provenance is verified (in the background).
        deadline = time.time() + 30
        while True:
            status, body = eb.get(full.port, "/simple/%s/" % PROJECT)
            if status == 200 and WHEEL.encode() in body:
                break
            if time.time() > deadline:
                raise SystemExit("the full gate never listed the wheel: %s %s" % (status, body[:300]))
            time.sleep(0.3)
        assert b"data-provenance" in body
        assert WHEEL.encode() in eb.get(peer.port, "/simple/%s/" % PROJECT)[1]
        rates = {"peer": [], "full": []}
        for r in range(eb.REPS):
            for label, g in (("peer", peer), ("full", full)):
                rps, _ = eb.wrk("http://127.0.0.1:%d/simple/%s/" % (g.port, PROJECT))
                rates[label].append(rps)
            log("run %d: peer %.0f req/s, full %.0f req/s" % (r + 1, rates["peer"][-1], rates["full"][-1]))
        # An allowlist reload with the database unchanged reuses it: measured, it should cost
        # about nothing.
        before = open(os.path.join(full.dir, "gate.log")).read().count("vulnerability database loaded")
        full.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        reread = open(os.path.join(full.dir, "gate.log")).read().count("vulnerability database loaded") - before
        records = re.search(r"records=(\d+)", open(os.path.join(full.dir, "gate.log")).read()).group(1)
        rss = int(open("/proc/%d/status" % full.proc.pid).read().split("VmRSS:")[1].split()[0]) // 1024
        rss_peer = int(open("/proc/%d/status" % peer.proc.pid).read().split("VmRSS:")[1].split()[0]) // 1024
        for g in (peer, full):
            g.stop()
        # Loading the database: `tollgate check` (a fresh process reading the config, the
        # allowlist and the database), against the same without [vulnerabilities].
        loads = {"with": [], "without": []}
        cfg_without = os.path.join(work, "without.toml")
        open(cfg_without, "w").write('allowlist_dir = "%s"\n' % os.path.join(full.dir, "allowlists")
                                     + 'trusted_root = "%s"\n' % root)
        for _ in range(eb.REPS):
            for label, c in (("with", cfg), ("without", cfg_without)):
                t = time.monotonic()
                r = subprocess.run([eb.AFTER, "check", "--config", c], capture_output=True, text=True)
                loads[label].append((time.monotonic() - t) * 1000)
                if r.returncode != 0:
                    raise SystemExit("check failed: %s" % r.stderr[-500:])
        peak = subprocess.run(["/usr/bin/time", "-f", "%M", eb.AFTER, "check", "--config", cfg],
                              capture_output=True, text=True).stderr.strip().splitlines()[-1]
    finally:
        for p in eb.PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)
    p, f = statistics.median(rates["peer"]), statistics.median(rates["full"])
    print("\n== provenance and vulnerability benchmark (loopback; medians of %d) ==" % eb.REPS)
    print("cached page: exact pins %7.0f req/s; with a publisher and %s advisories %7.0f req/s (x%.2f, goal >= 0.9)"
          % (p, records, f, f / p))
    w, wo = statistics.median(loads["with"]), statistics.median(loads["without"])
    print("database load (%s records, zip): tollgate check %d ms with it, %d ms without (load ~%d ms), peak RSS %d MiB; an allowlist reload re-read it %d time(s)"
          % (records, w, wo, w - wo, int(peak) // 1024, reread))
    print("resident memory: peer %d MiB, with the database %d MiB" % (rss_peer, rss))


if __name__ == "__main__":
    main()
