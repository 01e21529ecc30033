#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests drive (docker-registry,
# skopeo, openssl, apache2-utils (htpasswd), buildah, podman, runc and postgresql from Debian; uv
# and pypiserver from PyPI; mitmproxy, checkov, kubernetes-validate and azure-storage-blob in their
# own virtualenvs under target/tools; Azurite from npm; pip, node and kubectl are already there),
# then lint, the release build the image is made from, and every test. PostgreSQL and Azurite are
# started once for the whole run (scripts/services.sh) and stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v htpasswd >/dev/null 2>&1 || need_apt+=(apache2-utils)
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# kubectl (with its built-in kustomize) comes with the machine; Debian's is older but renders.
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package starts its own registry on :5000 where systemd runs; the tests start theirs.

need_pip=()
command -v uv >/dev/null 2>&1 || need_pip+=(uv)
command -v pypi-server >/dev/null 2>&1 || need_pip+=(pypiserver)
# PyYAML reads the PyPA advisory database's YAML records in tests/osv_vectors.rs.
python3 -c 'import yaml' >/dev/null 2>&1 || need_pip+=(pyyaml)
if [ ${#need_pip[@]} -gt 0 ]; then
    python3 -m pip install --disable-pip-version-check -q "${need_pip[@]}"
fi
# Python applications the tests drive, each in its own virtualenv under target/tools (their
# pinned dependencies must not meet each other's or the system's): mitmproxy, a TLS-re-signing
# egress proxy.
if [ ! -x target/tools/mitm/bin/mitmdump ]; then
    python3 -m venv target/tools/mitm
    target/tools/mitm/bin/pip install --disable-pip-version-check -q "mitmproxy==11.0.2"
fi
# checkov and kubernetes-validate, which check the deploy files.
if [ ! -x target/tools/deploy/bin/checkov ] || [ ! -x target/tools/deploy/bin/kubernetes-validate ]; then
    python3 -m venv target/tools/deploy
    target/tools/deploy/bin/pip install --disable-pip-version-check -q "checkov==3.3.30" "kubernetes-validate==1.37.0"
fi
# The Azure Storage client, to make the test container in Azurite and to edit a blob in it.
if [ ! -x target/tools/azure/bin/python ] || ! target/tools/azure/bin/python -c 'import azure.storage.blob' 2>/dev/null; then
    python3 -m venv target/tools/azure
    target/tools/azure/bin/pip install --disable-pip-version-check -q "azure-storage-blob==12.26.0"
fi
# pyenv installs console scripts behind shims; make sure new ones are visible.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The container image is built from the release binary (tests/deploy.rs).
cargo build --release --bin tollgate
# PostgreSQL and Azurite, once for the whole run.
eval "$(scripts/services.sh)"
trap 'scripts/services.sh stop "$TOLLGATE_TEST_SERVICES"' EXIT
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi
