#!/usr/bin/env python3
"""Writes a data_dir with a released tollgate binary, for tests/store_compat.rs.

usage: make_previous_store.py TOLLGATE_BINARY OUTDIR

OUTDIR gets data/ (the redb store and the cache), allowlists/, tollgate.toml, audit-key.pem and
facts.json (what the store holds: the admin token, the approved and cached files with their
sha256). The gate ran against a local static index of tests/support/fixtures.py's deterministic
wheels; it approved demo-a 1.0 through the admin API, served demo_b's pinned wheel, pinned
`fresh` at first sight, wrote audit entries with signed checkpoints, and was stopped with SIGTERM.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(url, code=None):
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            if code is not None and e.code == code:
                return e.code
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def call(method, url, token, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def main():
    binary, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "allowlists"))
    work = tempfile.mkdtemp()
    dists = json.loads(subprocess.check_output([sys.executable, os.path.join(HERE, "fixtures.py"), os.path.join(work, "upstream")]))
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(up_port), "--bind", "127.0.0.1", "--directory", os.path.join(work, "upstream")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(f"http://127.0.0.1:{up_port}/simple/")
        subprocess.check_call(["openssl", "genpkey", "-algorithm", "ed25519", "-out", os.path.join(out, "audit-key.pem")])
        b = dists["demo_b-2.0-py3-none-any.whl"]["sha256"]
        with open(os.path.join(out, "allowlists", "team.toml"), "w") as f:
            f.write(f'[[package]]\nname = "demo-b"\nversion = "2.0"\nsha256 = ["{b}"]\n\n'
                    '[[package]]\nname = "fresh"\nspecifier = ">=1"\nmin_age = "0s"\n')
        port, admin = free_port(), free_port()
        with open(os.path.join(out, "tollgate.toml"), "w") as f:
            f.write(f'listen = "127.0.0.1:{port}"\ndata_dir = "data"\nallowlist_dir = "allowlists"\n'
                    f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                    '[audit]\nsigning_key_file = "audit-key.pem"\ncheckpoint_every = "1s"\n'
                    f'[[pypi.index]]\nname = "local"\nurl = "http://127.0.0.1:{up_port}/simple/"\n')
        cfg = os.path.join(out, "tollgate.toml")
        token = subprocess.check_output([binary, "token", "create", "--role", "admin", "--config", cfg]).decode().strip()
        gate = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(f"http://127.0.0.1:{port}/healthz")
            status, _ = call("POST", f"http://127.0.0.1:{admin}/admin/v1/approvals", token, {"name": "demo-a", "version": "1.0"})
            assert status == 201, status
            for project in ["demo-a", "demo-b", "fresh"]:
                wait(f"http://127.0.0.1:{port}/simple/{project}/")
            for name in ["demo_a-1.0-py3-none-any.whl", "demo_b-2.0-py3-none-any.whl", "fresh-1.0-py3-none-any.whl"]:
                project = dists[name]["project"]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/files/{project}/{dists[name]['sha256']}/{name}") as r:
                    assert r.read()
            wait(f"http://127.0.0.1:{port}/simple/evil/", 403)
            time.sleep(2.5)
        finally:
            gate.send_signal(signal.SIGTERM)
            gate.wait(30)
    finally:
        upstream.kill()
        shutil.rmtree(work, ignore_errors=True)
    facts = {
        "made_by": subprocess.check_output([binary, "--version"]).decode().strip(),
        "token": token,
        "cached": {n: dists[n] for n in ["demo_a-1.0-py3-none-any.whl", "demo_b-2.0-py3-none-any.whl", "fresh-1.0-py3-none-any.whl"]},
    }
    with open(os.path.join(out, "facts.json"), "w") as f:
        json.dump(facts, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
