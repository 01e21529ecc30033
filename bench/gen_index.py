#!/usr/bin/env python3
"""Static simple index for the benchmark's wheels.

    gen_index.py WHEELS_DIR OUT_DIR

Writes, for every *.whl in WHEELS_DIR:
  OUT_DIR/simple/index.html                      PEP 503 root page
  OUT_DIR/simple/{project}/index.html            PEP 503 page, links ../../packages/FILE#sha256=HEX
  OUT_DIR/simple/{project}/index.json            the same listing as PEP 691 JSON (nginx serves
                                                 it when the client asks for JSON)
  OUT_DIR/packages -> WHEELS_DIR                 (a symlink)
  OUT_DIR/requirements.txt                       name==version --hash=sha256:HEX, one per wheel
  OUT_DIR/largest.txt                            project, sha256, filename, size of the largest wheel
Hashes are cached in WHEELS_DIR/.sha256 (filename -> hex) so reruns do not rehash 100 MB.
"""

import hashlib
import html
import json
import os
import re
import sys


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    wheels_dir, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    cache_path = os.path.join(wheels_dir, ".sha256")
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    projects = {}
    for fn in sorted(os.listdir(wheels_dir)):
        if not fn.endswith(".whl"):
            continue
        path = os.path.join(wheels_dir, fn)
        size = os.path.getsize(path)
        entry = cache.get(fn)
        if not entry or entry.get("size") != size:
            entry = {"sha256": sha256_of(path), "size": size}
            cache[fn] = entry
        name, version = fn.split("-")[:2]
        projects.setdefault(normalize(name), []).append((fn, version, entry["sha256"], size))
    with open(cache_path, "w") as f:
        json.dump(cache, f, indent=1)

    simple = os.path.join(out, "simple")
    os.makedirs(simple, exist_ok=True)
    link = os.path.join(out, "packages")
    if os.path.islink(link) or os.path.exists(link):
        os.remove(link)
    os.symlink(wheels_dir, link)

    with open(os.path.join(simple, "index.html"), "w") as f:
        f.write("<!DOCTYPE html>\n<html><head><title>Simple index</title></head><body>\n")
        for p in sorted(projects):
            f.write(f'<a href="{p}/">{p}</a><br/>\n')
        f.write("</body></html>\n")

    reqs = []
    largest = None
    for p, files in sorted(projects.items()):
        d = os.path.join(simple, p)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "index.html"), "w") as f:
            f.write(f"<!DOCTYPE html>\n<html><head><title>Links for {p}</title></head><body>\n")
            f.write(f"<h1>Links for {p}</h1>\n")
            for fn, _, sha, _ in files:
                q = html.escape(fn)
                f.write(f'<a href="../../packages/{q}#sha256={sha}">{q}</a><br/>\n')
            f.write("</body></html>\n")
        page = {
            "meta": {"api-version": "1.1"},
            "name": p,
            "versions": sorted({v for _, v, _, _ in files}),
            "files": [
                {"filename": fn, "url": f"../../packages/{fn}", "hashes": {"sha256": sha}, "size": size}
                for fn, _, sha, size in files
            ],
        }
        with open(os.path.join(d, "index.json"), "w") as f:
            json.dump(page, f)
        for fn, version, sha, size in files:
            reqs.append(f"{p}=={version} --hash=sha256:{sha}")
            if largest is None or size > largest[3]:
                largest = (p, sha, fn, size)

    with open(os.path.join(out, "requirements.txt"), "w") as f:
        f.write("\n".join(reqs) + "\n")
    with open(os.path.join(out, "largest.txt"), "w") as f:
        f.write(" ".join(str(x) for x in largest) + "\n")
    print(f"{len(reqs)} wheels in {len(projects)} projects, {sum(e['size'] for e in cache.values()) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
