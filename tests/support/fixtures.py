#!/usr/bin/env python3
"""Builds small, real, deterministic distributions and a static PEP 503 tree for the tests.

usage: fixtures.py OUTDIR

Writes OUTDIR/packages/* (wheels and one sdist) and OUTDIR/simple/ (PEP 503 HTML with
#sha256= fragments), and prints a JSON manifest: {filename: {"sha256", "size", "project"}}.
"""
import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import zipfile

EPOCH = (2020, 1, 1, 0, 0, 0)

# project, version, dependencies, payload marker
WHEELS = [
    ("demo_a", "1.0", [], "A1"),
    ("demo_a", "1.1", [], "A11"),
    ("demo_b", "2.0", ["demo-a==1.0"], "B2"),
    ("evil", "1.0", [], "EVIL"),
    ("swapped", "1.0", [], "ORIGINAL"),
    ("fresh", "1.0", [], "FRESH"),
    ("good", "1.0", [], "GOOD"),
    ("big", "1.0", [], "BIG"),
]


def noise(n, seed):
    """Deterministic incompressible bytes, so a wheel can be made large."""
    out = bytearray()
    block = seed.encode()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(outdir, name, version, deps, marker):
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\nSummary: tollgate test fixture {marker}\n"
    for d in deps:
        metadata += f"Requires-Dist: {d}\n"
    files = {
        f"{name}/__init__.py": f"MARKER = {marker!r}\n# padding {'x' * 2000}\n".encode(),
        f"{name}/data.bin": noise(256 * 1024 if name == "big" else 16, name),
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tollgate-fixtures\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},{record_hash(d)},{len(d)}\n" for p, d in files.items())
    record += f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    fname = f"{name}-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            info = zipfile.ZipInfo(p, date_time=EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, d)
    with open(os.path.join(outdir, fname), "wb") as f:
        f.write(buf.getvalue())
    return fname


def build_sdist(outdir, name, version):
    fname = f"{name}-{version}.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as t:
        data = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        info = tarfile.TarInfo(f"{name}-{version}/PKG-INFO")
        info.size = len(data)
        info.mtime = 1577836800
        t.addfile(info, io.BytesIO(data))
    # gzip embeds a timestamp; tarfile uses the current time, so fix it for determinism
    raw = bytearray(buf.getvalue())
    raw[4:8] = b"\0\0\0\0"
    with open(os.path.join(outdir, fname), "wb") as f:
        f.write(bytes(raw))
    return fname


def normalize(name):
    import re
    return re.sub(r"[-_.]+", "-", name).lower()


def main():
    out = sys.argv[1]
    pkgs = os.path.join(out, "packages")
    os.makedirs(pkgs, exist_ok=True)
    names = [build_wheel(pkgs, *w) for w in WHEELS]
    names.append(build_sdist(pkgs, "demo_a", "1.0"))
    manifest = {}
    by_project = {}
    for n in names:
        data = open(os.path.join(pkgs, n), "rb").read()
        project = normalize(n.split("-")[0])
        manifest[n] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "project": project}
        by_project.setdefault(project, []).append(n)
    simple = os.path.join(out, "simple")
    os.makedirs(simple, exist_ok=True)
    with open(os.path.join(simple, "index.html"), "w") as f:
        f.write("<!DOCTYPE html><html><body>\n")
        for p in sorted(by_project):
            f.write(f'<a href="{p}/">{p}</a>\n')
        f.write("</body></html>\n")
    for p, files in by_project.items():
        os.makedirs(os.path.join(simple, p), exist_ok=True)
        with open(os.path.join(simple, p, "index.html"), "w") as f:
            f.write(f"<!DOCTYPE html><html><body><h1>Links for {p}</h1>\n")
            for n in sorted(files):
                f.write(f'<a href="../../packages/{n}#sha256={manifest[n]["sha256"]}" data-requires-python="&gt;=3.8">{n}</a><br/>\n')
            f.write("</body></html>\n")
    json.dump(manifest, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
