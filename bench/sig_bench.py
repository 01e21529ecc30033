#!/usr/bin/env python3
"""The signature-verification benchmark, on loopback only: what a first signature check adds to a
manifest pull through tollgate, and cached-verdict manifest requests/s against docker-registry
(distribution 2.8) direct.

    python3 bench/sig_bench.py          from anywhere (it finds the repository root)

Setup: one docker-registry with N small images in each of four repositories: `pinned` (a digest
rule, no signature: the reference), `key` (a cosign legacy signature by an ECDSA P-256 key),
`keyless` (a legacy signature with a Fulcio certificate and Rekor entry) and `bundle` (a keyless
cosign v3 bundle found through the referrers tag). Signatures are made by the test Sigstore of
tests/support/sigstore_sign.py (a test Fulcio CA and Rekor key; real ECDSA); the gate checks them
exactly as in production (chain, SET, inclusion proof, binding, identity).

1. First-request latency: GET of each image's manifest by digest through a fresh tollgate (no
   verdict cached), interleaved across the four rules, medians over N images. "added" is the
   median minus the pinned median: the signature artifact fetches (3 to 5 more upstream requests
   on loopback) plus verification. tollgate's own verification time (cryptography and rule, no
   I/O) is read from its /metrics (tollgate_signature_check_seconds). The same upstream requests
   made directly, one after another, are timed for comparison.
2. Cached-verdict manifest GET requests/s (wrk -t2 -cCONNS, REPS x DUR s, medians): tollgate
   for a keyless-signed digest vs docker-registry direct for the same manifest. Target >= 5x.

Knobs (environment): N (20) images per repository, REPS (3), DUR (5) seconds, CONNS (16),
BUILD=1 to rebuild target/release/tollgate.
"""
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = os.path.join(ROOT, "bench", "work", "sig")
N = int(os.environ.get("N", "20"))
REPS = int(os.environ.get("REPS", "3"))
DUR = int(os.environ.get("DUR", "5"))
CONNS = int(os.environ.get("CONNS", "16"))
TG = os.path.join(ROOT, "target", "release", "tollgate")
MT = "application/vnd.oci.image.manifest.v1+json"
ISSUER = "https://token.actions.githubusercontent.com"
IDENTITY = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.0.0"
KINDS = ["pinned", "key", "keyless", "bundle", "rekor2"]

sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
import sigstore_sign as ss  # noqa: E402  (the test Sigstore)

PROCS = []


def log(msg):
    print("[sig-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def die(msg):
    log("FAILED: " + msg)
    sys.exit(1)


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            die("%s exited" % what)
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    die("%s did not start" % what)


def tools():
    need = [pkg for cmd, pkg in [("docker-registry", "docker-registry"), ("wrk", "wrk")] if not shutil.which(cmd)]
    if need:
        log("installing " + " ".join(need))
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + need, check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
    if not os.path.exists(TG) or os.environ.get("BUILD") == "1":
        log("building tollgate (release)")
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)


def start_registry():
    d = os.path.join(W, "registry")
    port = free_port()
    os.makedirs(os.path.join(d, "storage"))
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n"
                "    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: %s/storage\n  delete:\n"
                "    enabled: true\nhttp:\n  addr: 127.0.0.1:%d\n" % (d, port))
    p = subprocess.Popen(["docker-registry", "serve", os.path.join(d, "config.yml")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "registry.log"), "w"))
    PROCS.append(p)
    wait_port(port, p, "docker-registry")
    return port


def push_image(reg, repo, i):
    """One small image: a unique config and one 4 KiB layer."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "bench": [repo, i],
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    c = reg.blob(config)
    layer = reg.blob(os.urandom(4096))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT,
                           "config": dict(c, mediaType="application/vnd.oci.image.config.v1+json"),
                           "layers": [dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar")]}).encode()
    return reg.manifest("v%d" % i, manifest, MT)


def start_gate(reg_port, digests):
    d = os.path.join(W, "gate")
    os.makedirs(os.path.join(d, "allowlists", "keys"))
    shutil.copy(os.path.join(W, "bench.key.pub"), os.path.join(d, "allowlists", "keys", "bench.pub"))
    shutil.copy(os.path.join(W, "sigstore", "trusted_root.json"), os.path.join(d, "trusted_root.json"))
    ident = '{ issuer = "%s", subject = "%s" }' % (ISSUER, IDENTITY)
    with open(os.path.join(d, "allowlists", "bench.toml"), "w") as f:
        f.write('[[image]]\nrepository = "registry.test/bench/pinned"\ndigests = [%s]\n\n'
                % ", ".join('"%s"' % x for x in digests["pinned"]))
        f.write('[[image]]\nrepository = "registry.test/bench/key"\n[image.signature]\nkeys = ["bench.pub"]\n\n')
        f.write('[[image]]\nrepository = "registry.test/bench/keyless"\n[image.signature]\nkeyless = [%s]\n\n' % ident)
        f.write('[[image]]\nrepository = "registry.test/bench/bundle"\n[image.signature]\nkeyless = [%s]\n\n' % ident)
        f.write('[[image]]\nrepository = "registry.test/bench/rekor2"\n[image.signature]\nkeyless = [%s]\n' % ident)
    with open(os.path.join(d, "config.toml"), "w") as f:
        f.write('listen = "127.0.0.1:0"\ndata_dir = "data"\nallowlist_dir = "allowlists"\n'
                'trusted_root = "trusted_root.json"\n[oci]\ntag_ttl = "60s"\n[[oci.registry]]\nhost = "registry.test"\nprefix = "reg"\n'
                'url = "http://127.0.0.1:%d"\n' % reg_port)
    out = open(os.path.join(d, "stdout"), "w")
    p = subprocess.Popen([TG, "serve", "--config", os.path.join(d, "config.toml")], stdout=out,
                         stderr=open(os.path.join(d, "tollgate.log"), "w"), env=dict(os.environ, TOLLGATE_LOG="json"))
    PROCS.append(p)
    for _ in range(600):
        with open(os.path.join(d, "stdout")) as f:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        if m:
            return int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    die("tollgate did not start (see %s/tollgate.log)" % d)


def timed_get(conn, path, headers, want=200):
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    dt = time.perf_counter() - t0
    if r.status != want:
        die("GET %s: %d %s" % (path, r.status, body[:300]))
    return dt


def wrk(url):
    script = os.path.join(W, "report.lua")
    with open(script, "w") as f:
        f.write('done = function(s, l, r) io.write(string.format("WRK %.1f %d %d %d\\n", s.requests / (s.duration / 1e6), '
                's.requests, s.errors.status, s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout)) end\n')
    out = subprocess.run(["wrk", "-t2", "-c%d" % CONNS, "-d%ds" % DUR, "--timeout", "30s", "-s", script,
                          "-H", "Accept: " + MT, url], capture_output=True, text=True).stdout
    m = re.search(r"^WRK (\S+) (\d+) (\d+) (\d+)$", out, re.M)
    if not m or int(m.group(2)) == 0:
        die("wrk gave no result for %s: %s" % (url, out))
    if m.group(3) != "0" or m.group(4) != "0":
        die("wrk saw errors for %s: %s" % (url, out))
    return float(m.group(1))


def main():
    tools()
    shutil.rmtree(W, ignore_errors=True)
    os.makedirs(W)
    with open("/proc/loadavg") as f:
        log("load average at start: %s on %d cores (other load skews every figure)" % (" ".join(f.read().split()[:3]), os.cpu_count()))
    reg_port = start_registry()
    registry = "http://127.0.0.1:%d" % reg_port
    ss.init(os.path.join(W, "sigstore"))
    log("pushing and signing %d images per repository" % N)
    digests = {k: [] for k in KINDS}
    for kind in KINDS:
        reg = ss.Registry(registry, "bench/" + kind)
        for i in range(N):
            d = push_image(reg, kind, i)
            digests[kind].append(d)
            args = {"pinned": None,
                    "key": ("legacy-sig", ["--key", os.path.join(W, "bench.key"), "--reference", "registry.test/bench/key"]),
                    "keyless": ("legacy-sig", ["--identity", IDENTITY, "--issuer", ISSUER, "--reference", "registry.test/bench/keyless"]),
                    "bundle": ("bundle", ["--identity", IDENTITY, "--issuer", ISSUER]),
                    "rekor2": ("bundle", ["--identity", IDENTITY, "--issuer", ISSUER, "--rekor-v2"])}[kind]
            if args:
                with contextlib.redirect_stdout(io.StringIO()):
                    ss.sign(os.path.join(W, "sigstore"), registry, "bench/" + kind, d, args[0], args[1])
    gate_port = start_gate(reg_port, digests)
    log("tollgate on http://127.0.0.1:%d" % gate_port)

    # 1. first-request latency, interleaved across the rules
    accept = {"Accept": MT}
    gate = http.client.HTTPConnection("127.0.0.1", gate_port)
    direct = http.client.HTTPConnection("127.0.0.1", reg_port)
    timed_get(gate, "/v2/", {})
    timed_get(direct, "/v2/", {})
    first = {k: [] for k in KINDS}
    second = {k: [] for k in KINDS}
    up_manifest, up_artifacts = [], []
    for i in range(N):
        for kind in KINDS:
            path = "/v2/reg/bench/%s/manifests/%s" % (kind, digests[kind][i])
            first[kind].append(timed_get(gate, path, accept))
            second[kind].append(timed_get(gate, path, accept))
        # The upstream requests of a key-signed image's first check, made directly in sequence.
        d = digests["key"][i]
        hexd = d.split(":", 1)[1]
        up_manifest.append(timed_get(direct, "/v2/bench/key/manifests/%s" % d, accept))
        t = timed_get(direct, "/v2/bench/key/manifests/sha256-%s.sig" % hexd, accept)
        direct.request("GET", "/v2/bench/key/manifests/sha256-%s.sig" % hexd, headers=accept)
        layer = json.loads(direct.getresponse().read())["layers"][0]["digest"]
        t += timed_get(direct, "/v2/bench/key/blobs/%s" % layer, {})
        t += timed_get(direct, "/v2/bench/key/manifests/sha256-%s.att" % hexd, accept, 404)
        t += timed_get(direct, "/v2/bench/key/referrers/%s" % d, accept, 404)
        t += timed_get(direct, "/v2/bench/key/manifests/sha256-%s" % hexd, accept, 404)
        up_artifacts.append(t)
    gate.close()
    direct.close()
    metrics = http.client.HTTPConnection("127.0.0.1", gate_port)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    s = float(re.search(r"^tollgate_signature_check_seconds_sum (\S+)$", text, re.M).group(1))
    c = int(re.search(r"^tollgate_signature_check_seconds_count (\S+)$", text, re.M).group(1))
    ms = lambda xs: statistics.median(xs) * 1000

    # 2. cached-verdict requests/s
    log("cached-verdict manifest GET, %d x %ds per side, wrk -t2 -c%d" % (REPS, DUR, CONNS))
    d = digests["keyless"][0]
    urls = {"tollgate": "http://127.0.0.1:%d/v2/reg/bench/keyless/manifests/%s" % (gate_port, d),
            "direct": "http://127.0.0.1:%d/v2/bench/keyless/manifests/%s" % (reg_port, d)}
    runs = {k: [] for k in urls}
    for _ in range(REPS):
        for k, u in urls.items():
            runs[k].append(wrk(u))
    rps = {k: statistics.median(v) for k, v in runs.items()}

    print("\n## tollgate signature benchmark (%d images per rule; medians)\n" % N)
    print("| first manifest GET by digest | latency ms | added vs pinned ms |")
    print("|---|---|---|")
    base = ms(first["pinned"])
    for kind in KINDS:
        print("| %s | %.2f | %s |" % (kind, ms(first[kind]), "-" if kind == "pinned" else "%.2f" % (ms(first[kind]) - base)))
    print("\n| reference | ms |")
    print("|---|---|")
    print("| cached-verdict manifest GET through tollgate (keyless) | %.2f |" % ms(second["keyless"]))
    print("| manifest GET direct from docker-registry | %.2f |" % ms(up_manifest))
    print("| a key-signed image's artifact requests direct, in sequence (.sig, its blob, .att, referrers, referrers tag) | %.2f |" % ms(up_artifacts))
    print("| tollgate's verification time per check, mean over %d checks (no I/O) | %.3f |" % (c, s / max(c, 1) * 1000))
    print("\n| cached-verdict manifest GET | req/s | runs |")
    print("|---|---|---|")
    for k in urls:
        print("| %s | %.0f | %s |" % (k, rps[k], ", ".join("%.0f" % x for x in runs[k])))
    print("\nratio tollgate / docker-registry direct: %.2fx (target >= 5x)" % (rps["tollgate"] / rps["direct"]))
    worst = max(ms(first[k]) - base for k in KINDS[1:])
    print("largest added first-check latency: %.2f ms (target <= 20 ms beyond the upstream fetches; this figure includes them)" % worst)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
