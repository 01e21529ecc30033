#!/usr/bin/env bash
# The adversarial property suite run long: every parser that reads outside input (pages,
# requirement files, allowlists, references, manifests, AdmissionReviews, signature artifacts,
# bundles, trusted roots, wheels) on PROPTEST_CASES cases each (default 20000; the test suite
# runs a few hundred). A failure prints the smallest input that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-20000}"
cargo test --release --test properties -- --test-threads=2
cargo test --release --lib properties -- --test-threads=2
