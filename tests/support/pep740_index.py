#!/usr/bin/env python3
"""A PyPI-like static upstream for the PEP 740 tests: real attested distributions (from
tests/fixtures/pep740) under simple/ (PEP 503 HTML with #sha256=) and packages/, and their real
provenance objects where warehouse's Integrity API serves them:
integrity/<project>/<version>/<filename>/provenance.

usage: pep740_index.py FIXTURES OUTDIR   (prints {filename: sha256} as JSON)
"""
import hashlib
import json
import os
import re
import shutil
import sys

fx, out = sys.argv[1], sys.argv[2]

# (file under fixtures, provenance object under fixtures or None, or an attestation to wrap)
FILES = [
    ("circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl",
     "circleci_sign_publish_example-0.0.1.dev137-py3-none-any.whl.provenance", None),
    ("pypi_attestations-0.0.19.tar.gz", "pypi_attestations-0.0.19.tar.gz.provenance", None),
    # The 0.0.19 bytes and provenance published again as 0.0.20: provenance for another file.
    ("derived/renamed/pypi_attestations-0.0.20.tar.gz",
     "derived/renamed/pypi_attestations-0.0.20.tar.gz.provenance", None),
    ("gitlab_oidc_project-0.0.3.tar.gz", None, "gitlab_oidc_project-0.0.3.tar.gz.publish.attestation"),
    # No provenance at all.
    ("gcb_attestation_test-0.0.0.tar.gz", None, None),
    # Signed on Sigstore's staging instance, by a person.
    ("rfc8785-0.1.2-py3-none-any.whl", None, "rfc8785-0.1.2-py3-none-any.whl.publish.attestation"),
    ("pypi_attestation_models-0.0.4a2.tar.gz", None, None),
]


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def split(filename):
    stem = filename[:-4] if filename.endswith(".whl") else filename[: -len(".tar.gz")]
    name, version = stem.split("-")[:2]
    return normalize(name), version


pkgs = os.path.join(out, "packages")
os.makedirs(pkgs, exist_ok=True)
projects, shas = {}, {}
for rel, prov, att in FILES:
    name = os.path.basename(rel)
    shutil.copy(os.path.join(fx, rel), os.path.join(pkgs, name))
    data = open(os.path.join(fx, rel), "rb").read()
    shas[name] = hashlib.sha256(data).hexdigest()
    project, version = split(name)
    projects.setdefault(project, []).append(name)
    body = None
    if prov:
        body = open(os.path.join(fx, prov), "rb").read()
    elif att:
        a = json.load(open(os.path.join(fx, att)))
        body = json.dumps({"version": 1, "attestation_bundles": [
            {"publisher": {"kind": "unknown"}, "attestations": [a]}]}).encode()
    if body is not None:
        d = os.path.join(out, "integrity", project, version, name)
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "provenance"), "wb").write(body)
for project, names in projects.items():
    d = os.path.join(out, "simple", project)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "index.html"), "w") as f:
        f.write("<!DOCTYPE html><html><body>\n")
        for n in sorted(names):
            f.write(f'<a href="../../packages/{n}#sha256={shas[n]}">{n}</a><br/>\n')
        f.write("</body></html>\n")
json.dump(shas, sys.stdout, indent=1, sort_keys=True)
