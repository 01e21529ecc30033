#!/usr/bin/env python3
"""Load, soak and slowloris, on loopback only: what holding connections and flooding the gate with
requests for things it refuses cost it, beside nginx (Debian's default configuration, serving a
static file) under the same attack.

    python3 bench/soak.py            from anywhere (it finds the repository root)

1. Slowloris: SLOW sockets from one address trickle a request head (a byte every 2 s), while
   /healthz is asked from another address every 100 ms; medians and p99 of its latency and the
   share that failed, for tollgate ([limits] defaults: head_timeout 10 s, per_client_connections
   256) and nginx. Then the same with the sockets spread over 127.0.0.2-127.0.0.9 (so per-client
   caps do not apply and only max_connections and head_timeout do).
2. Load: CONNS concurrent connections spread over 127.0.0.2-127.0.0.9 (one peer's cap is 256;
   spreading is the documented way to go past it) for DUR seconds, each asking for a distinct
   unknown project (/simple/<random>/, 403), a distinct unknown repository
   (/v2/reg/<random>/manifests/latest, 403) or an allowed page (200), keep-alive; plus SLOWREAD
   clients that request an allowed page and never read the answer. Requests/s, status counts,
   tollgate's peak RSS (VmHWM) and RSS after the load (target <= 200 MiB), and open connections
   and RSS once the clients are gone (nothing kept).

Knobs (environment): SLOW (1100), CONNS (1000), DUR (20), SLOWREAD (100), BUILD=1 to rebuild
target/release/tollgate.
"""
import asyncio
import os
import random
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
TG = os.path.join(ROOT, "target", "release", "tollgate")
SLOW = int(os.environ.get("SLOW", "1100"))
CONNS = int(os.environ.get("CONNS", "1000"))
DUR = int(os.environ.get("DUR", "20"))
SLOWREAD = int(os.environ.get("SLOWREAD", "100"))
SPREAD = ["127.0.0.%d" % i for i in range(2, 10)]
PROCS = []


def log(msg):
    print("[soak %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        t = f.read()
    return int(re.search(r"VmRSS:\s+(\d+)", t).group(1)), int(re.search(r"VmHWM:\s+(\d+)", t).group(1))


def tools():
    need = []
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        need.append("nginx-light")
    if need:
        log("installing " + " ".join(need))
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + need, check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
    if not os.path.exists(TG) or os.environ.get("BUILD") == "1":
        log("building tollgate (release)")
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)


def start_upstream(d):
    """A static PEP 503 index with one project, so allowed pages have something to list."""
    os.makedirs(os.path.join(d, "up", "simple", "demo"))
    with open(os.path.join(d, "up", "simple", "demo", "index.html"), "w") as f:
        f.write("<html><body></body></html>\n")
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                          "--directory", os.path.join(d, "up")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    return port


def start_gate(d, up_port, reg_port):
    g = os.path.join(d, "gate")
    os.makedirs(os.path.join(g, "allowlists"))
    with open(os.path.join(g, "allowlists", "a.toml"), "w") as f:
        f.write('[[package]]\nname = "demo"\nspecifier = ">=0"\nmin_age = "0s"\n')
    with open(os.path.join(g, "tollgate.toml"), "w") as f:
        f.write('listen = "127.0.0.1:0"\ndata_dir = "data"\nallowlist_dir = "allowlists"\n'
                '[[pypi.index]]\nname = "local"\nurl = "http://127.0.0.1:%d/simple/"\n'
                '[[oci.registry]]\nhost = "registry.test"\nprefix = "reg"\nurl = "http://127.0.0.1:%d"\n'
                % (up_port, reg_port))
    out = open(os.path.join(g, "stdout"), "w")
    p = subprocess.Popen([TG, "serve", "--config", os.path.join(g, "tollgate.toml")], stdout=out,
                         stderr=open(os.path.join(g, "tollgate.log"), "w"), env=dict(os.environ, RUST_LOG="warn"))
    PROCS.append(p)
    for _ in range(300):
        with open(os.path.join(g, "stdout")) as f:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        if m:
            return p, int(m.group(1))
        time.sleep(0.05)
    sys.exit("tollgate did not start")


def start_nginx(d):
    n = os.path.join(d, "nginx")
    os.makedirs(os.path.join(n, "www"))
    with open(os.path.join(n, "www", "healthz"), "w") as f:
        f.write("ok\n")
    port = free_port()
    # Debian's defaults where they matter here: one worker per core, 768 connections each,
    # client_header_timeout 60 s.
    with open(os.path.join(n, "nginx.conf"), "w") as f:
        f.write("worker_processes auto;\npid %s/nginx.pid;\nerror_log %s/error.log;\ndaemon off;\n"
                "events { worker_connections 768; }\nhttp { access_log off; server { listen 127.0.0.1:%d; "
                "root %s/www; } }\n" % (n, n, port, n))
    p = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", os.path.join(n, "nginx.conf"),
                          "-p", n], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    time.sleep(0.5)
    return port


async def trickler(port, src, stop):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    except OSError:
        return
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000
    try:
        for b in head:
            if stop.is_set():
                break
            w.write(bytes([b]))
            await w.drain()
            await asyncio.sleep(2)
    except (OSError, ConnectionError):
        pass
    finally:
        w.close()


async def probe(port, stop, lat, failed):
    while not stop.is_set():
        t = time.perf_counter()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.10", 0)), 5)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await w.drain()
            data = await asyncio.wait_for(r.read(), 5)
            w.close()
            if b" 200 " in data.split(b"\r\n")[0]:
                lat.append(time.perf_counter() - t)
            else:
                failed.append(1)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            failed.append(1)
        await asyncio.sleep(0.1)


async def slowloris(port, spread, seconds=25):
    stop = asyncio.Event()
    lat, failed = [], []
    socks = [asyncio.create_task(trickler(port, spread[i % len(spread)], stop)) for i in range(SLOW)]
    await asyncio.sleep(2)
    p = asyncio.create_task(probe(port, stop, lat, failed))
    await asyncio.sleep(seconds)
    stop.set()
    await p
    for s in socks:
        s.cancel()
    await asyncio.gather(*socks, return_exceptions=True)
    lat.sort()
    ms = lambda x: x * 1000
    p50 = ms(statistics.median(lat)) if lat else float("nan")
    p99 = ms(lat[min(len(lat) - 1, int(len(lat) * 0.99))]) if lat else float("nan")
    return p50, p99, len(failed), len(lat) + len(failed)


async def client(port, src, stop, counts):
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
        except OSError:
            counts["connect_error"] = counts.get("connect_error", 0) + 1
            await asyncio.sleep(0.05)
            continue
        try:
            while not stop.is_set():
                k = random.random()
                name = "p%016x" % random.getrandbits(64)
                if k < 0.45:
                    path = "/simple/%s/" % name
                elif k < 0.9:
                    path = "/v2/reg/%s/app/manifests/latest" % name
                else:
                    path = "/simple/demo/"
                w.write(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                status = head.split(b" ", 2)[1].decode()
                m = re.search(rb"(?i)content-length: (\d+)", head)
                if m:
                    await r.readexactly(int(m.group(1)))
                counts[status] = counts.get(status, 0) + 1
        except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            counts["dropped"] = counts.get("dropped", 0) + 1
        finally:
            w.close()


async def slow_reader(port, src, stop):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
        for _ in range(200):
            w.write(b"GET /simple/demo/ HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        await stop.wait()
        w.close()
    except (OSError, ConnectionError):
        pass


async def load(port, pid):
    stop = asyncio.Event()
    counts = {}
    tasks = [asyncio.create_task(client(port, SPREAD[i % len(SPREAD)], stop, counts)) for i in range(CONNS)]
    tasks += [asyncio.create_task(slow_reader(port, SPREAD[i % len(SPREAD)], stop)) for i in range(SLOWREAD)]
    t0 = time.time()
    peak = 0
    while time.time() - t0 < DUR:
        await asyncio.sleep(1)
        peak = max(peak, rss_kib(pid)[0])
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts, time.time() - t0, peak


def main():
    tools()
    d = tempfile.mkdtemp(prefix="tollgate-soak-")
    with open("/proc/loadavg") as f:
        log("load average at start: %s on %d cores" % (" ".join(f.read().split()[:3]), os.cpu_count()))
    try:
        up = start_upstream(d)
        reg = free_port()  # nothing listens: unknown repositories are refused before any fetch
        gate, gport = start_gate(d, up, reg)
        nport = start_nginx(d)
        idle, _ = rss_kib(gate.pid)
        print("\n## tollgate soak, slowloris and load (loopback, %d cores)\n" % os.cpu_count())
        print("| slowloris: %d sockets trickling a head, /healthz every 100 ms from another address | median ms | p99 ms | failed |" % SLOW)
        print("|---|---|---|---|")
        for name, port in [("tollgate", gport), ("nginx", nport)]:
            for label, spread in [("one address", ["127.0.0.1"]), ("8 addresses", SPREAD)]:
                log("slowloris against %s from %s" % (name, label))
                p50, p99, failed, total = asyncio.run(slowloris(port, spread))
                print("| %s, from %s | %.1f | %.1f | %d of %d |" % (name, label, p50, p99, failed, total))
        log("load: %d connections for %d s, %d slow readers" % (CONNS, DUR, SLOWREAD))
        counts, secs, peak = asyncio.run(load(gport, gate.pid))
        total = sum(v for k, v in counts.items() if k.isdigit())
        after, hwm = rss_kib(gate.pid)
        time.sleep(5)
        settled, _ = rss_kib(gate.pid)
        # The same load again: what stays after the first is reused, not added to.
        log("load again")
        asyncio.run(load(gport, gate.pid))
        time.sleep(5)
        settled2, hwm2 = rss_kib(gate.pid)
        import urllib.request
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % gport).read().decode()
        open_conns = re.search(r"^tollgate_connections_open (\S+)$", metrics, re.M).group(1)
        print("\n| load: %d connections over 8 addresses, %d s, plus %d clients that never read | value |" % (CONNS, DUR, SLOWREAD))
        print("|---|---|")
        print("| requests answered | %d (%.0f/s) |" % (total, total / secs))
        print("| by status | %s |" % ", ".join("%s: %d" % kv for kv in sorted(counts.items())))
        print("| RSS idle / peak sampled / high-water mark, MiB | %.1f / %.1f / %.1f (target <= 200) |" % (idle / 1024, peak / 1024, hwm / 1024))
        print("| RSS 5 s after the clients left, MiB | %.1f |" % (settled / 1024))
        print("| RSS and high-water mark after the same load a second time, MiB | %.1f / %.1f |" % (settled2 / 1024, hwm2 / 1024))
        print("| connections open after the clients left | %s |" % open_conns)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
