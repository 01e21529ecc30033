//! Signature and attestation verification (cosign legacy artifacts, Sigstore bundles), key-based
//! and keyless, fully offline. Pure: artifacts, keys and the trusted root are handed in.

pub mod cosign;
pub mod dsse;
pub mod keys;
pub mod rekor;
pub mod sigstore;
pub mod trust;
pub mod x509;
