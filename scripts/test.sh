#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests drive (docker-registry,
# skopeo, openssl and apache2-utils (htpasswd) from Debian; uv and pypiserver from PyPI; pip is already there), then lint
# and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v htpasswd >/dev/null 2>&1 || need_apt+=(apache2-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package starts its own registry on :5000 where systemd runs; the tests start theirs.

need_pip=()
command -v uv >/dev/null 2>&1 || need_pip+=(uv)
command -v pypi-server >/dev/null 2>&1 || need_pip+=(pypiserver)
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
# pyenv installs console scripts behind shims; make sure new ones are visible.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi
